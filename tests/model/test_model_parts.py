"""Encoders, probabilistic heads and the model's loss terms (the decoder: test_decoder.py)."""

from __future__ import annotations

import pytest
import torch

import uca_kernels as uk
from uca_model.config import EncoderConfig, HeadConfig, from_dict
from uca_model.encoders import PretrainedCLIPError, build_encoders, resize_position_embedding
from uca_model.heads import ProbabilisticHead
from uca_model.model import UCAModel

SPECIAL = {"pad": 0, "bos": 2, "eos": 3, "mask": 4}
VOCAB = 50


def _tiny_model_cfg(mode="uca", **loss):
    return from_dict({"model": {"mode": mode,
        "encoder": {"vision": {"image_size": [32, 16], "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                               "num_heads": 2},
                    "text": {"max_len": 12, "hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "head": {"embed_dim": 8}, "decoder": {"width": 16, "num_heads": 2},
        "loss": {"num_samples": 3, "backend": "reference", **loss}}}).model


def _batch(b=6, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, L), generator=g)
    lengths = torch.randint(4, L + 1, (b,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = 2
    ids[torch.arange(b), lengths - 1] = 3
    ids = ids * mask
    labels = torch.full_like(ids, -100)
    mlm = ids.clone()
    labels[:, 1] = ids[:, 1]
    mlm[:, 1] = 4
    return {"images": torch.randn(b, 3, 32, 16, generator=g), "input_ids": ids, "attention_mask": mask,
            "pids": torch.tensor([0, 1, 0, 2, 3, 1])[:b], "mlm_input_ids": mlm, "mlm_labels": labels}


def test_resize_position_embedding_keeps_class_and_grid():
    pos = torch.randn(1 + 16, 5)
    out = resize_position_embedding(pos, (6, 2))
    assert out.shape == (13, 5) and torch.equal(out[0], pos[0])
    assert torch.equal(resize_position_embedding(pos, (4, 4)), pos)
    with pytest.raises(ValueError, match="not a square grid"):
        resize_position_embedding(torch.randn(1 + 15, 5), (3, 5))


def test_tiny_towers_shapes_and_wrong_sizes():
    cfg = _tiny_model_cfg().encoder
    cfg.preset = "tiny"
    vision, text, proj = build_encoders(cfg, VOCAB, SPECIAL)
    assert proj is None
    b = _batch()
    tokens = vision(b["images"])
    assert tokens.shape == (6, 1 + 4 * 2, 32)
    toks, glob = text(b["input_ids"], b["attention_mask"])
    assert toks.shape == (6, 12, 32) and glob.shape == (6, 32)
    last = b["attention_mask"].sum(1) - 1
    assert torch.equal(glob, toks[torch.arange(6), last])
    with pytest.raises(ValueError, match="expects 32x16"):
        vision(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at most 12"):
        text(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.long))


def test_pretrained_preset_errors_and_local_folder(tmp_path):
    cfg = EncoderConfig(preset="clip-vit-b16", pretrained_path=str(tmp_path / "nope"))
    with pytest.raises(PretrainedCLIPError, match="is not a folder"):
        build_encoders(cfg, VOCAB, SPECIAL)
    (tmp_path / "empty").mkdir()
    cfg.pretrained_path = str(tmp_path / "empty")
    with pytest.raises(PretrainedCLIPError, match="no config.json"):
        build_encoders(cfg, VOCAB, SPECIAL)
    # a (tiny) CLIP saved the Hugging Face way loads, with 4x4 positions resized to the 4x2 grid and the
    # vocabulary grown by one (an added mask token)
    from transformers import CLIPConfig, CLIPModel

    hf = CLIPConfig(text_config={"vocab_size": VOCAB - 1, "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
                    vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                    projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(hf).save_pretrained(tmp_path / "clip")
    cfg = _tiny_model_cfg().encoder
    cfg.preset, cfg.pretrained_path = "clip-vit-b16", str(tmp_path / "clip")
    vision, text, proj = build_encoders(cfg, VOCAB, SPECIAL)
    assert proj["image"].shape == (8, 32) and proj["text"].shape == (8, 32)
    assert vision(torch.randn(2, 3, 32, 16)).shape == (2, 9, 32)
    assert text.clip.embeddings.token_embedding.num_embeddings == VOCAB
    # the whole UCA model on that folder trains one step (every term, finite, parameters move)
    mcfg = _tiny_model_cfg()
    mcfg.encoder = cfg
    model = UCAModel(mcfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.vision.parameters()]
    terms = model(_batch())["terms"]
    total = sum(w * terms[k] for k, w in model.loss_weights().items())
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.vision.parameters()))
    cfg.vision.patch_size = 16
    cfg.vision.image_size = (32, 16)
    with pytest.raises(ValueError, match="patch_size=16 but the pretrained model"):
        build_encoders(cfg, VOCAB, SPECIAL)


def test_head_initial_logvar_bounds_and_baseline():
    cfg = HeadConfig(embed_dim=4, init_logvar=-3.0, min_logvar=-8.0, max_logvar=1.0)
    head = ProbabilisticHead(cfg, 10)
    glob, tokens = torch.randn(5, 10), torch.randn(5, 7, 10)
    mu, logvar = head(glob, tokens, torch.ones(5, 7))
    torch.testing.assert_close(logvar, torch.full((5, 4), -3.0))
    torch.testing.assert_close(mu.norm(dim=1), torch.ones(5))
    with torch.no_grad():
        head.logvar.weight.normal_(std=100.0)
    _, logvar = head(glob, tokens)
    assert logvar.min() >= -8.0 and logvar.max() <= 1.0
    mu, logvar = ProbabilisticHead(cfg, 10, probabilistic=False)(glob, tokens)
    assert logvar is None and mu.shape == (5, 4)
    # masked mean: padding tokens do not change mu
    mask = torch.ones(5, 7)
    mask[:, 5:] = 0
    tokens2 = tokens.clone()
    tokens2[:, 5:] = 1e3
    torch.testing.assert_close(head(glob, tokens, mask)[0], head(glob, tokens2, mask)[0])


def test_model_terms_weights_and_gradients():
    torch.manual_seed(0)
    cfg = _tiny_model_cfg(id_weight=0.5)
    model = UCAModel(cfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    out = model(_batch(), generator=torch.Generator().manual_seed(1))
    w = model.loss_weights()
    assert set(out["terms"]) == set(w) == {"dcl", "pcl_inter", "pcl_intra_image", "pcl_intra_text", "amlr",
                                           "kl_image", "kl_text", "id"}
    assert w["pcl_inter"] == cfg.loss.pcl_weight and w["kl_text"] == cfg.loss.kl_weight
    assert set(out["stats"]) == {"sigma_image", "sigma_text", "scale_dcl", "scale_pcl", "bias_dcl", "bias_pcl"}
    total = sum(w[k] * out["terms"][k] for k in w)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the reconstruction reaches the image distribution's logvar through the sampled points
    model.zero_grad()
    model(_batch(), generator=torch.Generator().manual_seed(1))["terms"]["amlr"].backward()
    assert model.image_head.logvar.bias.grad.abs().sum() > 0
    # the DCL term is uca_kernels' loss on the model's distributions
    b = _batch()
    img, txt = model.encode_image(b["images"]), model.encode_text(b["input_ids"], b["attention_mask"])
    ref = uk.distribution_contrast_loss(img["mu"], img["logvar"], txt["mu"], txt["logvar"], b["pids"],
                                        metric=cfg.loss.metric, loss=cfg.loss.contrast_loss, scale=cfg.loss.dcl_scale,
                                        bias=cfg.loss.dcl_bias, backend="reference")
    torch.testing.assert_close(model(b)["terms"]["dcl"], ref, rtol=1e-5, atol=1e-5)
    # same generator -> same samples -> same loss
    a = model(b, generator=torch.Generator().manual_seed(5))["terms"]["pcl_inter"]
    c = model(b, generator=torch.Generator().manual_seed(5))["terms"]["pcl_inter"]
    assert torch.equal(a, c)


def test_switched_off_terms_build_no_modules_and_baseline():
    cfg = _tiny_model_cfg(amlr_weight=0.0, pcl_intra=False)
    model = UCAModel(cfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert model.decoder is None and model.classifier is None
    assert set(model(_batch())["terms"]) == {"dcl", "pcl_inter", "kl_image", "kl_text"}
    cfg = _tiny_model_cfg("baseline", dcl_weight=0.0, pcl_weight=0.0, amlr_weight=0.0, kl_weight=0.0)
    model = UCAModel(cfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    out = model(_batch())
    assert set(out["terms"]) == {"cosine_sdm"} and model.loss_weights() == {"cosine_sdm": 1.0}
    # the baseline is IRRA's SDM on cosine whatever UCA's contrast_loss is; the term says which loss
    assert cfg.loss.contrast_loss == "sigmoid" and cfg.loss.baseline_loss == "sdm"
    f_v = model.encode_image(_batch()["images"])["mu"]
    f_t = model.encode_text(_batch()["input_ids"], _batch()["attention_mask"])["mu"]
    A, Bf = torch.nn.functional.normalize(f_v, dim=1), torch.nn.functional.normalize(f_t, dim=1)
    zero = torch.zeros(A.shape[0])
    ref = sum(x.mean() for x in uk.contrast(A, Bf, zero, zero, cfg.loss.baseline_scale, 0.0, _batch()["pids"],
                                            _batch()["pids"], loss="sdm", backend="reference"))
    torch.testing.assert_close(out["terms"]["cosine_sdm"], ref, rtol=1e-5, atol=1e-5)
    cfg.loss.baseline_loss = "infonce"
    model = UCAModel(cfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert set(model(_batch())["terms"]) == {"cosine_infonce"} and model.loss_weights() == {"cosine_infonce": 1.0}
    assert set(out["stats"]) == {"scale_baseline"} and model.scale_names() == ["baseline"]
    assert model.encode_image(_batch()["images"])["logvar"] is None
    assert not hasattr(model.image_head, "logvar")


def test_learned_and_fixed_logit_scales():
    model = UCAModel(_tiny_model_cfg(learn_scale=True, max_scale=6.0), vocab_size=VOCAB, special=SPECIAL,
                     num_train_ids=4)
    assert isinstance(model.dcl_log_scale, torch.nn.Parameter) and model.scale_names() == ["dcl", "pcl"]
    out = model(_batch())
    sum(out["terms"].values()).backward()
    assert model.dcl_log_scale.grad is not None and model.pcl_log_scale.grad is not None
    with torch.no_grad():
        model.pcl_log_scale.fill_(5.0)  # exp(5) > max_scale
    assert float(model.scale("pcl").detach()) == pytest.approx(6.0)
    fixed = UCAModel(_tiny_model_cfg(learn_scale=False), vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert "dcl_log_scale" in dict(fixed.named_buffers()) and "dcl_log_scale" not in dict(fixed.named_parameters())
    assert float(fixed.scale("dcl")) == pytest.approx(fixed.cfg.loss.dcl_scale)
    # a switched-off term's scale is not a parameter (DDP rejects parameters without gradients)
    dcl_only = UCAModel(_tiny_model_cfg(learn_scale=True, pcl_weight=0.0, amlr_weight=0.0), vocab_size=VOCAB,
                        special=SPECIAL, num_train_ids=4)
    params = dict(dcl_only.named_parameters())
    assert "dcl_log_scale" in params and "pcl_log_scale" not in params
    assert "pcl_log_scale" in dcl_only.state_dict()
