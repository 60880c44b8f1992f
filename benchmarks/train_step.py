"""One training step of the ``clip-vit-b16`` preset with random weights, timed per loss backend.

    python -m benchmarks.train_step --device cuda --out train-step.txt            # batch 128, bf16 autocast
    python -m benchmarks.train_step --device cpu --dry --out /tmp/train-step.txt  # tiny towers, batch 4

The preset's model (``uca_model.presets.clip_vit_b16_config``: 384×128 images, 77 text tokens,
embed_dim 512, the UCA loss terms: distribution and point contrast with SDM, K = 4 samples, intra
terms, attribute-masking reconstruction, prior KL) is built from a CLIP ViT-B/16 *configuration*
with random weights, written to a temporary folder so that the preset's own loading code runs (no
pretrained weights are needed or fetched; ``--dry`` makes the towers tiny). Random images and
token ids stand in for a batch. For each backend: the step (forward under autocast, weighted
total, backward, AdamW step) once untimed, then ``--steps`` timed steps; the median, the peak
memory and the loss terms are appended to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import torch


CLIP_VOCAB = 49408  # CLIP's BPE vocabulary (its last two ids are the start and end tokens)
TINY_VOCAB = 1000  # the dry run's (the decoder's output layer is vocabulary × 512)


def special_ids(vocab: int) -> dict:
    """CLIP's special tokens for a vocabulary of ``vocab`` ids, plus the added mask token (id ``vocab``)."""
    return {"pad": vocab - 1, "bos": vocab - 2, "eos": vocab - 1, "mask": vocab}


def random_clip_folder(path: str, tiny: bool) -> str:
    """A Hugging Face CLIP folder (config.json + model.safetensors) of ViT-B/16 shape (``tiny``: one
    layer of width 32 per tower and a 1000-token vocabulary), randomly initialised."""
    from transformers import CLIPConfig, CLIPModel

    if tiny:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=224, patch_size=16)
    else:  # openai/clip-vit-base-patch16
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=16)
    text_config = dict(vocab_size=TINY_VOCAB if tiny else CLIP_VOCAB, max_position_embeddings=77, **text)
    cfg = CLIPConfig(text_config=text_config, vision_config=vision,
                     projection_dim=512)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    return path


def make_batch(b: int, cfg, vocab: int, special: dict, device, g: torch.Generator) -> dict:
    """Random images, captions of random length with BOS/EOS, identities (about two captions per
    identity) and 15 % of the caption tokens masked for the reconstruction term."""
    H, W = cfg.encoder.vision.image_size
    L = cfg.encoder.text.max_len
    ids = torch.randint(0, special["bos"], (b, L), generator=g)
    lengths = torch.randint(8, L, (b,), generator=g)
    pos = torch.arange(L)[None, :]
    ids[:, 0] = special["bos"]
    ids = torch.where(pos == lengths[:, None], torch.tensor(special["eos"]), ids)
    attn = (pos <= lengths[:, None]).long()
    ids = torch.where(attn.bool(), ids, torch.tensor(special["pad"]))
    masked = (torch.rand(b, L, generator=g) < 0.15) & attn.bool() & (pos > 0) & (pos < lengths[:, None])
    batch = {"images": torch.randn(b, 3, H, W, generator=g), "input_ids": ids, "attention_mask": attn,
             "pids": torch.randint(0, max(1, b // 2), (b,), generator=g),
             "mlm_input_ids": torch.where(masked, torch.tensor(special["mask"]), ids),
             "mlm_labels": torch.where(masked, ids, torch.tensor(-100))}
    return {k: v.to(device) for k, v in batch.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--out", required=True, help="text file to append to")
    ap.add_argument("--backends", default=None, help="comma-separated (default triton,cuda,reference on a GPU)")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (the preset's)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--autocast", default=None, choices=("bf16", "none"),
                    help="default bf16 on a GPU, none on the CPU (bf16 there is emulated: minutes per step)")
    ap.add_argument("--dry", action="store_true", help="tiny towers, batch 4, CPU backends: the code path")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    args.batch = args.batch or (4 if args.dry else 128)
    args.backends = args.backends or ("cpu" if args.dry else "cpu,reference" if args.device == "cpu"
                                      else "triton,cuda,reference")
    args.autocast = args.autocast or ("bf16" if args.device == "cuda" else "none")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    from uca_model.model import UCAModel
    from uca_model.presets import clip_vit_b16_config
    from uca_model.trainer import build_optimizer

    from .harness import environment
    from .providers import fused_design, skip_reason

    env = environment(args.device)

    def emit(text: str) -> None:
        print(text, flush=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="uca-clip-b16-") as tmp:
        t0 = time.perf_counter()
        folder = random_clip_folder(os.path.join(tmp, "clip"), tiny=args.dry)
        run_cfg = clip_vit_b16_config(folder, data_root=tmp)
        built = time.perf_counter() - t0
        emit(f"# One training step of the clip-vit-b16 preset (random weights) — {env['device_name']}\n\n"
             f"torch {env['torch']}, commit {env['commit']}, {env['date']}; batch {args.batch}, "
             f"{'tiny towers (dry run)' if args.dry else 'ViT-B/16 towers'}, "
             f"{'bf16 autocast' if args.autocast == 'bf16' else 'float32'}, AdamW; "
             f"medians of {args.steps} steps after one untimed step (random CLIP folder written in {built:.1f} s).\n")
        base_vocab = TINY_VOCAB if args.dry else CLIP_VOCAB
        special = special_ids(base_vocab)
        vocab = base_vocab + 1  # the tokenizer plus the added mask token
        for backend in (b for b in args.backends.split(",") if b):
            from benchmarks.cases import Case

            why = (None if backend in ("reference", "auto")
                   else skip_reason(backend, Case("dist", 512, True), args.device))
            if why:
                emit(f"- `{backend}`: skipped: {why}")
                continue
            try:
                loss_cfg = dataclasses.replace(run_cfg.model.loss, backend=backend)
                mcfg = dataclasses.replace(run_cfg.model, loss=loss_cfg)
                torch.manual_seed(0)
                model = UCAModel(mcfg, vocab_size=vocab, special=special, num_train_ids=1000).to(device)
                opt = build_optimizer(model, run_cfg.optim)
                weights = model.loss_weights()
                g = torch.Generator().manual_seed(0)
                batch = make_batch(args.batch, mcfg, vocab, special, device, g)
                times, terms = [], {}
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                for i in range(args.steps + 1):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
                        out = model(batch, generator=torch.Generator().manual_seed(i))
                    total = sum(weights[k] * out["terms"][k] for k in weights)
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    opt.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - t0)
                    terms = {k: float(v.detach()) for k, v in out["terms"].items()}
                peak = (f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda"
                        else "peak not measured on the CPU")
                design = fused_design(backend) if backend not in ("reference", "auto") else "materialised"
                emit(f"- `{backend}` ({design}): {statistics.median(times) * 1e3:,.1f} ms per step "
                     f"(min {min(times) * 1e3:,.1f}), {peak}; terms "
                     + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))
                del model, opt, batch, out, total
            except Exception as e:  # noqa: BLE001  (recorded; the next backend goes on)
                emit(f"- `{backend}`: failed: {type(e).__name__}: {e}"[:600])
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
