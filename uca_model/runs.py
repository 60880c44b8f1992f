"""A finished run, loaded back: its config, model, tokenizer and data, and text queries against it
(used by ``uca eval`` / ``search`` / ``demo``, the uncertainty analysis and the benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["load_run", "search_rows"]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """Rebuild a run from its saved config and load a checkpoint into it.

    Returns:
        ``(cfg, model, tokenizer, dataset, device, ckpt)`` with the model in eval mode.

    Raises:
        FileNotFoundError, ConfigError, CheckpointError: with what is wrong and what to do.
    """
    import torch

    from .checkpoint import CheckpointError, check_config_match, check_state_dict, load_checkpoint, load_run_config, \
        resolve_checkpoint
    from .distributed import DistContext
    from .model import build_model
    from .trainer import prepare_data, resolve_device

    cfg = load_run_config(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    check_config_match(ckpt["config"], cfg, str(path), sections=("model",))
    ds, tok = prepare_data(cfg.data, DistContext(), progress=False)
    if len(tok) != ckpt.get("vocab_size", len(tok)):
        raise CheckpointError(f"{path} was trained with a {ckpt['vocab_size']}-token vocabulary but the tokenizer of "
                              f"{cfg.data.root} has {len(tok)}: the data or tokenizer changed since training")
    dev = resolve_device(device, DistContext())
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, ckpt.get("num_train_ids", ds.num_train_ids))
    check_state_dict(model, ckpt["model"], str(path))
    model.to(dev).eval()
    return cfg, model, tok, ds, dev, ckpt


def search_rows(model, tok, cfg, queries: Sequence[str], gallery, topk: int, device, query_pids=None) -> list[dict]:
    """Top-``topk`` gallery images per query text, as rows for :func:`uca_model.plots.plot_retrieval`."""
    import torch

    from .evaluation import embed_images, embed_texts, score_fn
    from .trainer import eval_score

    score = eval_score(cfg)
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, cfg.eval.batch_size, device)
    txt = embed_texts(model, tok, list(queries), cfg.model.encoder.text.max_len, cfg.eval.batch_size, device)
    s = score_fn(txt, img, score, cfg.model.loss.metric)(0, len(queries))  # [Q, G], higher = better
    k = min(topk, len(gallery))
    vals, idx = torch.topk(s, k, dim=1)
    name = cfg.model.loss.metric if score == "distance" else "cos"
    sig_img = (0.5 * img["logvar"]).exp().mean(1) if img["logvar"] is not None else None
    sig_txt = (0.5 * txt["logvar"]).exp().mean(1) if txt["logvar"] is not None else None
    rows = []
    for qi, q in enumerate(queries):
        hits = []
        for v, j in zip(vals[qi].tolist(), idx[qi].tolist()):
            hits.append({"path": gallery[j].image_path, "pid": gallery[j].pid, "score_name": name,
                         "score": -v if score == "distance" else v,
                         "sigma": float(sig_img[j]) if sig_img is not None else None})
        rows.append({"caption": q, "sigma": float(sig_txt[qi]) if sig_txt is not None else None,
                     "pid": None if query_pids is None else query_pids[qi], "hits": hits})
    return rows
