"""benchmarks/ab_trees.py times the fused op in two source trees, interleaved; here both are this
tree at a tiny size (the script's path, not a speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import ab_trees
from uca_kernels import _ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not _ext.has_op("contrast_forward"), reason=f"uca_kernels._C not loaded: {_ext.load_error()}")
def test_same_tree_twice_gives_one_row_per_loss(tmp_path):
    out = tmp_path / "ab.md"
    ab_trees.main([str(ROOT), str(ROOT), "--b", "64", "--e", "8", "--rounds", "1", "--reps", "1",
                   "--losses", "sdm,sigmoid", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| sdm |") or line.startswith("| sigmoid |")]
    assert len(rows) == 2
    for row in rows:
        old, new, ratio = (float(x) for x in row.split("|")[2:5])  # times rounded to ms: ratio not rebuilt
        assert old > 0 and new > 0 and 0 < ratio < 100


def test_a_tree_without_the_package_is_named(tmp_path):
    with pytest.raises(SystemExit, match=f"timing {tmp_path} failed"):
        ab_trees.main([str(tmp_path), str(ROOT), "--b", "8", "--e", "4", "--rounds", "1", "--reps", "1",
                       "--losses", "sdm"])
