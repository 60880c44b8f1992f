"""Pictures of a run: training curves, retrieval results, σ calibration, ablation bars (matplotlib, Agg)."""

from __future__ import annotations

import csv
import math
import os
import textwrap
from pathlib import Path
from typing import Sequence

__all__ = ["plot_curves", "plot_retrieval", "plot_calibration", "plot_ablation", "read_csv"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_curves(history_csv: str | os.PathLike, eval_csv: str | os.PathLike, out_png: str | os.PathLike,
                title: str = "") -> Path:
    """Loss terms and total vs step, mean sigma per modality, and val R@1 / mAP vs epoch."""
    plt = _plt()
    hist, ev = read_csv(history_csv), read_csv(eval_csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if hist:
        steps = [_num(r["step"]) for r in hist]
        terms = [k for k in hist[0] if k.startswith("loss/")]
        for k in terms:
            ax.plot(steps, [_num(r[k]) for r in hist], label=k[5:], lw=1.6 if k == "loss/total" else 1.0)
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("step")
    ax.set_title("training loss terms (unweighted; total weighted)")
    ax = axes[1]
    if hist and "sigma_image" in hist[0]:
        steps = [_num(r["step"]) for r in hist]
        ax.plot(steps, [_num(r["sigma_image"]) for r in hist], label="image")
        ax.plot(steps, [_num(r["sigma_text"]) for r in hist], label="text")
        ax.legend()
        ax.set_title("mean sigma per modality")
    else:
        ax.set_title("mean sigma (fixed-point model: none)")
    ax.set_xlabel("step")
    ax = axes[2]
    val = [r for r in ev if r.get("split") == "val"]
    if val:
        ep = [_num(r["epoch"]) for r in val]
        for k in ("R1", "R5", "mAP"):
            ax.plot(ep, [_num(r[k]) for r in val], marker="o", label=f"val {k}")
        test = [r for r in ev if r.get("split") == "test"]
        for r in test:
            ax.scatter([_num(r["epoch"])], [_num(r["R1"])], marker="*", s=120, color="k", zorder=5, label="test R1")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title("retrieval (val; test once at the end)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_retrieval(rows: Sequence[dict], out_png: str | os.PathLike, title: str = "") -> Path:
    """One row per query: the caption (and its sigma), then the top-k images with rank, distance /
    score, image sigma and a green (same identity) or red frame when the query identity is known.

    Each row: ``{"caption", "sigma": float | None, "pid": int | None, "hits": [{"path", "score",
    "score_name", "sigma", "pid"}]}``.
    """
    plt = _plt()
    from PIL import Image

    k = max(len(r["hits"]) for r in rows)
    n = len(rows)
    fig = plt.figure(figsize=(1.35 * k + 3.2, 2.9 * n))
    for i, r in enumerate(rows):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        ax.axis("off")
        cap = "\n".join(textwrap.wrap(r["caption"], 26))
        extra = f"\n\ntext σ = {r['sigma']:.4f}" if r.get("sigma") is not None else ""
        ax.text(0, 0.5, f"“{cap}”{extra}", fontsize=8, va="center", ha="left", transform=ax.transAxes)
        for j, h in enumerate(r["hits"]):
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + j + 2)
            with Image.open(h["path"]) as im:
                ax.imshow(im.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "0.6"
            if r.get("pid") is not None:
                colour = "tab:green" if h["pid"] == r["pid"] else "tab:red"
            for s in ax.spines.values():
                s.set_edgecolor(colour)
                s.set_linewidth(3)
            label = f"#{j + 1} {h['score_name']} {h['score']:.3f}"
            if h.get("sigma") is not None:
                label += f"\nσ {h['sigma']:.4f}"
            label += f"\nid {h['pid']}"
            ax.set_xlabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rho(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def plot_calibration(table: dict, out_png: str | os.PathLike, title: str = "") -> Path:
    """Two panels of a :func:`uca_model.uncertainty.calibration_table`: R@1 and mAP per text-σ decile
    (1 = most certain; the dashed lines are the whole split), and mean ± std text σ per number of
    identities a caption fits (SynthPedes; a note instead on other data). The Spearman values are
    in the panel titles."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    dec = table["by_sigma_decile"]
    x = [r["decile"] for r in dec]
    for key, colour, marker in (("R1", "tab:blue", "o"), ("mAP", "tab:orange", "s")):
        label = "R@1" if key == "R1" else key
        a1.plot(x, [r[key] for r in dec], marker=marker, color=colour, label=label)
        a1.axhline(table["overall"][key], color=colour, ls="--", lw=0.9, alpha=0.7,
                   label=f"{label}, all queries ({table['overall'][key]:.1f})")
    a1.set_xticks(x)
    a1.set_xticklabels([f"{r['decile']}\n≤{r['sigma_max']:.4f}" for r in dec], fontsize=7)
    sizes = sorted({r["queries"] for r in dec})
    each = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    a1.set_xlabel(f"text σ decile (1 = most certain; below: its largest σ; {each} queries each)", fontsize=9)
    a1.set_ylabel("% (this split)")
    a1.set_ylim(0, min(105.0, 1.25 * max(max(r["R1"], r["mAP"]) for r in dec) + 5))
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8, loc="best")
    a1.set_title(f"retrieval by text σ — Spearman(decile, R@1) = {_rho(table['spearman_sigma_decile_vs_R1'])}"
                 "\n(a σ that tracks difficulty: R@1 falls left to right, ρ < 0)", fontsize=10)
    fits = table.get("by_identities_fitted")
    if fits:
        xs = list(range(len(fits)))
        a2.errorbar(xs, [r["sigma_mean"] for r in fits], yerr=[r["sigma_std"] for r in fits], fmt="o-",
                    color="tab:green", ecolor="0.45", capsize=4)
        top = max(r["sigma_mean"] + r["sigma_std"] for r in fits)
        for i, r in enumerate(fits):
            a2.annotate(f"n={r['captions']}", (i, r["sigma_mean"] + r["sigma_std"]), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=7, color="0.3")
        bottom = min(r["sigma_mean"] - r["sigma_std"] for r in fits)
        pad = 0.12 * max(top - bottom, 1e-12)
        a2.set_ylim(bottom - pad, top + 2 * pad)
        a2.set_xticks(xs)
        a2.set_xticklabels([r["label"] for r in fits])
        a2.set_xlabel("identities of the gallery the caption fits (every mentioned attribute)", fontsize=9)
        a2.set_ylabel("text σ (mean ± std over captions)")
        a2.grid(alpha=0.3)
        a2.set_title(f"text σ vs ambiguity — Spearman(σ, identities fitted) = "
                     f"{_rho(table['spearman_text_sigma_vs_identities_fitted'])}\n(expected > 0; vs attributes "
                     f"mentioned: {_rho(table['spearman_text_sigma_vs_attributes_mentioned'])}, expected < 0)",
                     fontsize=10)
        occ, unocc = table.get("image_sigma_occluded"), table.get("image_sigma_unoccluded")
        if unocc is not None:
            note = f"image σ: occluded {occ:.4f} ({table['occluded_images']} images), unoccluded {unocc:.4f}" \
                if occ is not None else f"image σ: {unocc:.4f} (no occluded image)"
            a2.text(0.01, 0.02, note, transform=a2.transAxes, fontsize=8, color="0.3")
    else:
        a2.axis("off")
        a2.text(0.5, 0.5, "identities fitted: SynthPedes only\n(no synth_attributes.json for this data)",
                ha="center", va="center", fontsize=10, color="0.4", transform=a2.transAxes)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_ablation(summary: Sequence[dict], out_png: str | os.PathLike, metrics=("R1", "R5", "R10", "mAP", "mINP"),
                  title: str = "") -> Path:
    """Grouped bars (mean ± std over seeds) per variant, and the Bayes ceiling as a dashed line over
    the metrics the rows carry it for (``ceiling_<m>_mean``). ``summary``: ``[{"variant", "<m>_mean",
    "<m>_std", ...}]``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.0 + 1.8 * len(metrics), 4.2))
    nv = len(summary)
    width = 0.8 / max(1, nv)
    for i, row in enumerate(summary):
        xs = [m + (i - (nv - 1) / 2) * width for m in range(len(metrics))]
        ax.bar(xs, [row[f"{m}_mean"] for m in metrics], width, yerr=[row[f"{m}_std"] for m in metrics],
               capsize=3, label=row["variant"])
    ceiling = next((row for row in summary if "ceiling_R1_mean" in row), None)
    if ceiling is not None:  # SynthPedes: the Bayes ceiling over the groups it is known for
        drawn = [k for k, m in enumerate(metrics) if f"ceiling_{m}_mean" in ceiling]
        for k in drawn:
            ax.hlines(ceiling[f"ceiling_{metrics[k]}_mean"], k - 0.45, k + 0.45, colors="black", linestyles="--",
                      label="Bayes ceiling" if k == drawn[0] else None)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylabel("% (test)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, off the ceiling lines
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
