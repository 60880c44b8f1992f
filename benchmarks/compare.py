"""Per-case ratios between two result files (sweep or headline JSON) and flagged regressions.

    python -m benchmarks.compare OLD.json NEW.json [--threshold 1.10] [--fail]

Rows are matched on (provider, case, B, dtype). A time regression is a median ratio new/old above
``--threshold`` *and* new 20 % quantile above the old 80 % quantile (outside the run-to-run
spread); a memory regression is a ratio above the threshold and at least 1 MiB more. Timings are
only comparable on the same device: a differing device name is printed as a warning first.
Exit status 1 with ``--fail`` when something regressed.
"""

from __future__ import annotations

import argparse
import json


def _key(r: dict) -> tuple:
    return (r["provider"], r["case"], r.get("B"), r.get("dtype", ""))


def _load(path: str) -> tuple[dict, dict]:
    with open(path) as f:
        data = json.load(f)
    rows = {_key(r): r for r in data["rows"] if r.get("status") == "ok" and "time_median_s" in r}
    return data["meta"], rows


def compare(old_path: str, new_path: str, threshold: float = 1.10) -> tuple[list[dict], list[str]]:
    """(one dict per matched row with its ratios and flags, warnings)."""
    old_meta, old = _load(old_path)
    new_meta, new = _load(new_path)
    warnings = []
    if old_meta.get("device_name") != new_meta.get("device_name"):
        warnings.append(f"different devices: {old_meta.get('device_name')!r} vs {new_meta.get('device_name')!r}; "
                        "time ratios are not comparable")
    out = []
    for key in sorted(set(old) & set(new), key=lambda k: (k[1], k[0], k[2] or 0)):
        o, n = old[key], new[key]
        t_ratio = n["time_median_s"] / o["time_median_s"]
        m_ratio = (n["peak_mem_bytes"] + 1) / (o["peak_mem_bytes"] + 1)
        outside_spread = n.get("time_q20_s", n["time_median_s"]) > o.get("time_q80_s", o["time_median_s"])
        t_reg = t_ratio > threshold and outside_spread
        m_reg = m_ratio > threshold and n["peak_mem_bytes"] - o["peak_mem_bytes"] > 2**20
        out.append({"provider": key[0], "case": key[1], "B": key[2], "dtype": key[3], "time_ratio": t_ratio,
                    "mem_ratio": m_ratio, "time_regression": t_reg, "mem_regression": m_reg})
    only_old = len(set(old) - set(new))
    if only_old:
        warnings.append(f"{only_old} measured point(s) of OLD have no counterpart in NEW")
    return out, warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=1.10, help="ratio new/old that counts as a regression")
    ap.add_argument("--fail", action="store_true", help="exit 1 when something regressed")
    args = ap.parse_args(argv)
    rows, warnings = compare(args.old, args.new, args.threshold)
    for w in warnings:
        print("warning:", w)
    print(f"{'case':42s} {'provider':10s} {'B':>7s} {'time new/old':>13s} {'mem new/old':>12s}")
    for r in rows:
        flag = ("  TIME REGRESSION" if r["time_regression"] else "") + \
            ("  MEMORY REGRESSION" if r["mem_regression"] else "")
        print(f"{r['case']:42s} {r['provider']:10s} {r['B'] or '':>7} {r['time_ratio']:13.3f} "
              f"{r['mem_ratio']:12.3f}{flag}")
    n_reg = sum(r["time_regression"] or r["mem_regression"] for r in rows)
    print(f"{len(rows)} matched points, {n_reg} regression(s) (threshold {args.threshold:g})")
    return 1 if (args.fail and n_reg) else 0


if __name__ == "__main__":
    raise SystemExit(main())
