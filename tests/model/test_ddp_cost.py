"""benchmarks/ddp_cost.py runs both terms with 2 gloo processes at a tiny size (its path, not a speed)."""

from __future__ import annotations

import pytest

import uca_kernels as uk
from benchmarks import ddp_cost


@pytest.mark.skipif(not uk._ext.has_op("contrast_forward"), reason="needs the fused cpu backend")
@pytest.mark.parametrize("term,before_pairs", [("intra", 32 * 32), ("cross", 2 * 16 * 32)])
def test_table_names_both_variants_and_their_pairs(tmp_path, term, before_pairs):
    out = tmp_path / "cost.md"
    assert ddp_cost.main(["--term", term, "--local", "8", "--samples", "2", "--dim", "4", "--repeats", "1",
                          "--out", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if "(now)" in line or "(before)" in line]
    assert [r[1].strip() for r in rows] == list(ddp_cost.NAMES[term])
    assert [int(r[2].replace(",", "")) for r in rows] == [16 * 32, before_pairs]  # n = 2 x 8 x 2 = 32 points
    assert all(float(r[3]) > 0 for r in rows)
