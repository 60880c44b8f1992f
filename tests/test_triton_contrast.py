"""Triton backend of the contrast op against the float64 reference.

Without a GPU everything runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
conftest.py before the kernels are jitted) on small shapes; with a GPU the same tests run the
compiled kernels, and the ``gpu``-marked tests add fp16/bf16, tf32, larger sizes and torch.compile
with inductor.
"""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from uca_kernels import contrast, contrast_reference, dispatch  # noqa: E402
from uca_kernels._registry import STATS_DTYPE, gpu_chunking  # noqa: E402
from uca_kernels import triton_contrast as tc  # noqa: E402
from helpers import (FLOOR, OFFSET_BIASES, TF32_FLOOR, OpLog, assert_matches_oracle, check_offset_logits,  # noqa: E402
                     check_row_shares, check_split_rows, grad_mass, max_rel_err, scale_mass, shift_masses, stats_oracle)

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

pytestmark = pytest.mark.skipif(
    bool(tc.available_reasons()) or not (HAS_CUDA or tc.INTERPRET),
    reason="needs triton and a CUDA device or TRITON_INTERPRET=1: " + "; ".join(tc.available_reasons()),
)
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

LEAVES = ("A", "B", "r", "c", "scale", "bias")  # = helpers.GRAD_NAMES
# Tolerances: helpers.FLOOR / TF32_FLOOR and the rule of helpers.assert_matches_oracle, shared with
# the CPU and CUDA backends' tests.
LOSSES = ["sdm", "infonce", "sigmoid"]


# -- helpers -------------------------------------------------------------------------------------


def make_case(M, N, E, labels="repeat", *, seed=0, scale=3.0, bias=0.25, device=DEVICE):
    """Float64 inputs of the op: features with unit-ish logits, identities by ``labels``:
    repeat (few ids, repeats on both sides), unique (no pair shares an id), one (a single id),
    diag (labels=None: i ↔ i, needs M == N), mixed (some rows and columns without positives)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M, E, generator=g, dtype=torch.float64) / math.sqrt(E)
    B = torch.randn(N, E, generator=g, dtype=torch.float64) / math.sqrt(E)
    r = 0.5 * torch.randn(M, generator=g, dtype=torch.float64)
    c = 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    if labels == "repeat":
        la, lb = torch.randint(0, 4, (M,), generator=g), torch.randint(0, 4, (N,), generator=g)
    elif labels == "unique":
        la, lb = torch.arange(M), torch.arange(N) + M
    elif labels == "one":
        la, lb = torch.zeros(M, dtype=torch.long), torch.zeros(N, dtype=torch.long)
    elif labels == "mixed":
        la, lb = torch.randint(0, 8, (M,), generator=g), torch.randint(4, 12, (N,), generator=g)
    else:
        assert labels == "diag" and M == N
        la = lb = None
    out = dict(A=A, B=B, r=r, c=c, scale=torch.tensor(scale, dtype=torch.float64),
               bias=torch.tensor(bias, dtype=torch.float64), labels_a=la, labels_b=lb)
    return {k: (v.to(device) if v is not None else None) for k, v in out.items()}


def upstream(M, N, seed=1, device=DEVICE):
    """Upstream gradients ≠ 1 (and of both signs) for the row and column losses."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(M, generator=g, dtype=torch.float64) * 2 - 0.5).to(device), \
        (torch.rand(N, generator=g, dtype=torch.float64) * 2 - 0.5).to(device)


def run(case, dtype, loss, exclude_self, backend="triton", requires=LEAVES, grads=None, ref_dtype=None):
    """Losses and gradients of Σ g_rows·loss_rows + Σ g_cols·loss_cols through ``contrast``.

    Features are cast to ``dtype`` (r, c, scale, bias to float32, or float64); with
    ``backend="reference"`` and ``ref_dtype`` the reference runs in that dtype instead."""
    small = torch.float64 if dtype == torch.float64 else torch.float32
    x = {}
    for k in LEAVES:
        v = case[k].to(dtype if k in ("A", "B") else small).detach()
        x[k] = v.requires_grad_(k in requires)
    la, lb = case["labels_a"], case["labels_b"]
    if ref_dtype is not None:  # the materialised reference, in the features' own dtype
        if la is None:
            la = lb = torch.arange(case["A"].shape[0], device=case["A"].device)
        rows, cols = contrast_reference(x["A"], x["B"], x["r"], x["c"], x["scale"], x["bias"], la, lb,
                                        loss, exclude_self)
    else:
        rows, cols = contrast(x["A"], x["B"], x["r"], x["c"], x["scale"], x["bias"], la, lb,
                              loss=loss, exclude_self=exclude_self, backend=backend)
    gr, gc = grads if grads is not None else upstream(*rows.shape, *cols.shape)
    total = (rows * gr.to(rows.dtype)).sum() + (cols * gc.to(cols.dtype)).sum()
    req = [k for k in LEAVES if k in requires]
    d = dict(zip(req, torch.autograd.grad(total, [x[k] for k in req]))) if req else {}
    return rows.detach(), cols.detach(), d


def oracle(case, loss, exclude_self, requires=LEAVES, grads=None):
    return run(case, torch.float64, loss, exclude_self, backend="reference", requires=requires, grads=grads)


def max_err(got, want):
    return (got.double() - want.double()).abs().max().item()


def flat(out):
    """(rows, cols, {leaf: grad}) -> [rows, cols, dA, dB, dr, dc, dscale, dbias] (None: no grad)."""
    rows, cols, d = out
    return [rows, cols, *(d.get(k) for k in LEAVES)]


def check(case, dtype, loss, exclude_self, *, requires=LEAVES, floor=None):
    """The Triton backend in ``dtype`` against the float64 reference, by the shared rule: each
    output's relative error ≤ max(2 × that of the reference run in ``dtype``, floor); ``floor``
    defaults to FLOOR[dtype] (float32 for fp16/bf16). Returns (fused, float64 oracle)."""
    got = run(case, dtype, loss, exclude_self, requires=requires)
    want = oracle(case, loss, exclude_self, requires=requires)
    ref = run(case, dtype, loss, exclude_self, requires=requires, ref_dtype=dtype)
    assert set(got[2]) == set(want[2]) == set(ref[2])
    for a, b in zip(flat(got), flat(ref)):
        assert a is None or (a.shape == b.shape and a.dtype == b.dtype)
    if floor is None:
        floor = FLOOR[dtype if dtype == torch.float64 else torch.float32]
    M, N = case["A"].shape[0], case["B"].shape[0]
    mass = grad_mass(*upstream(M, N), loss)
    assert_matches_oracle(flat(got), flat(want), flat(ref), floor=floor, grad_l1=mass,
                          mass=shift_masses(M, N, loss, case["scale"], mass)
                          | scale_mass(case["A"], case["B"], case["r"], case["c"], mass))
    return got, want


# -- forward and backward against the float64 reference -------------------------------------------

SHAPES = [  # (labels, M, N, E, exclude_self)
    ("diag", 7, 7, 16, False),
    ("repeat", 70, 130, 100, False),  # E > BLOCK_E: dX read-modify-write path; ragged M, N
    ("repeat", 130, 70, 33, False),  # E < BLOCK_E: dX in registers
    ("repeat", 1, 130, 65, False),  # M = 1, E = BLOCK_E + 1
    ("repeat", 130, 1, 8, False),  # N = 1
    ("repeat", 70, 70, 40, True),
    ("repeat", 130, 130, 129, True),
    ("one", 20, 30, 12, False),  # one identity: every pair positive
    ("one", 9, 9, 5, True),
    ("unique", 20, 20, 12, False),  # no positives at all: zero loss, zero gradient
    ("mixed", 40, 50, 24, False),  # some rows and columns without positives
    ("mixed", 1, 1, 3, True),  # a single pair, excluded: nothing valid
    ("repeat", 20, 45, 12, True),  # exclude_self, M < N: pairs (i, i), i < M, dropped
    ("repeat", 45, 20, 12, True),
]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("labels,M,N,E,exclude_self", SHAPES)
def test_matches_reference_fp32(labels, M, N, E, exclude_self, loss):
    check(make_case(M, N, E, labels), torch.float32, loss, exclude_self)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("labels,M,N,E,exclude_self", [SHAPES[1], SHAPES[5], SHAPES[10]])
def test_matches_reference_fp64(labels, M, N, E, exclude_self, loss):
    check(make_case(M, N, E, labels, seed=3), torch.float64, loss, exclude_self)


def test_sigmoid_stats_are_zeros_and_lonely_rows_keep_their_terms():
    """sigmoid writes the schema's stats as zeros; rows and columns without positives still have
    loss (their negative terms) and gradient."""
    case = make_case(40, 50, 24, "mixed", seed=4)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    rows, cols, row_stats, col_stats = torch.ops.uca.triton_contrast_forward(*args, "sigmoid", False)
    assert row_stats.shape == (40, 4) and col_stats.shape == (50, 4) and row_stats.dtype == STATS_DTYPE
    assert not row_stats.any() and not col_stats.any()
    lonely = ~(case["labels_a"][:, None] == case["labels_b"][None, :]).any(1)
    assert lonely.any() and (rows[lonely] > 0).all()
    assert max_err(rows.sum(), cols.sum()) <= 1e-6 * rows.sum().item()  # the same pairs, summed twice
    got, _ = check(case, torch.float32, "sigmoid", False, requires=("A",))
    assert (got[2]["A"][lonely].abs().sum(1) > 0).all()


def test_no_positive_rows_have_zero_loss_and_gradient():
    case = make_case(40, 50, 24, "mixed")
    A, B = case["A"].float(), case["B"].float().requires_grad_(False)
    A.requires_grad_(True)
    la, lb = case["labels_a"], case["labels_b"]
    f = lambda A: torch.ops.uca.triton_contrast_forward(  # noqa: E731
        A, B, case["r"].float(), case["c"].float(), case["scale"].float(), case["bias"].float(),
        la, lb, "sdm", False)
    rows, cols, row_stats, col_stats = f(A)
    lonely = ~(la[:, None] == lb[None, :]).any(1)
    assert lonely.any() and (~lonely).any()
    assert (rows[lonely] == 0).all() and (rows[~lonely] > 0).all()
    assert (row_stats[lonely, 1] == float("-inf")).all() and (row_stats[lonely, 2] == 0).all()
    # only the row losses of rows without positives: no gradient at all
    (dA,) = torch.autograd.grad(rows[lonely].sum(), [A])
    assert (dA == 0).all()


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_stats(loss):
    case = make_case(70, 45, 20, "mixed", seed=5)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    _, _, row_stats, col_stats = torch.ops.uca.triton_contrast_forward(*args, loss, False)
    S = case["scale"] * (case["A"] @ case["B"].T + case["r"][:, None] + case["c"][None, :]) + case["bias"]
    pos = case["labels_a"][:, None] == case["labels_b"][None, :]
    for stats, S_, pos_ in ((row_stats, S, pos), (col_stats, S.T, pos.T)):
        want = stats_oracle(S_, pos_)
        assert stats.dtype == STATS_DTYPE == torch.float64 and stats.shape == want.shape
        assert torch.equal(stats[:, 1] == float("-inf"), want[:, 1] == float("-inf"))
        assert torch.equal(stats[:, 2].double(), want[:, 2])  # positive counts: exact
        for col in (0, 1, 3):  # the logsumexps where finite, the negative entropy
            finite = want[:, col].isfinite()
            assert max_rel_err(stats[finite, col].double(), want[finite, col]) <= FLOOR[torch.float32], col


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_split_rows_combine_to_the_whole(loss):
    """contrast.combine_stats of row shares' column statistics = the whole problem's, and the
    shares' backwards fed them add up to the whole backward (helpers.check_split_rows)."""
    check_split_rows(torch.ops.uca.triton_contrast_forward, torch.ops.uca.triton_contrast_backward, loss,
                     dtype=torch.float32, device=DEVICE, tol=FLOOR[torch.float32])


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_row_shares_equal_the_whole(loss):
    """contrast_row_share on three row shares = contrast() on the whole (helpers.check_row_shares)."""
    check_row_shares("triton", loss, dtype=torch.float32, device=DEVICE, tol=FLOOR[torch.float32])


def test_backward_names_statistics_of_the_wrong_dtype():
    case = make_case(6, 5, 4, "repeat", seed=3)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    rows, cols, row_stats, col_stats = torch.ops.uca.triton_contrast_forward(*args, "sdm", False)
    with pytest.raises(ValueError, match=r"col_stats must be the forward's statistics: a torch.float64 tensor"):
        torch.ops.uca.triton_contrast_backward(torch.ones_like(rows), torch.ones_like(cols), *args, rows, cols,
                                               row_stats, col_stats.float(), "sdm", False)


@pytest.mark.parametrize("requires", [("A",), ("B", "scale"), ("r", "c", "bias"), ()])
def test_some_inputs_do_not_require_grad(requires):
    case = make_case(30, 20, 70, "repeat", seed=7)
    for loss in ("sdm",) if not requires else ("infonce", "sigmoid"):  # none: plain forward
        got, _ = check(case, torch.float32, loss, False, requires=requires)
        assert set(got[2]) == set(requires)


def test_only_row_losses_used():
    """grad_cols is None in the autograd backward (the column losses are not used)."""
    case = make_case(25, 35, 10, "repeat", seed=8)

    def row_grads(dtype, fn):
        x = [case[k].to(dtype).requires_grad_(True) for k in LEAVES]
        rows, _ = fn(*x, case["labels_a"], case["labels_b"])
        return list(torch.autograd.grad(rows.sum() * 0.7, x))

    triton_fn = lambda *a: contrast(*a, loss="sdm", backend="triton")  # noqa: E731
    reference = lambda *a: contrast_reference(*a, "sdm")  # noqa: E731
    got, want, ref32 = row_grads(torch.float32, triton_fn), row_grads(torch.float64, reference), \
        row_grads(torch.float32, reference)
    assert_matches_oracle(got, want, ref32, floor=FLOOR[torch.float32], names=LEAVES,
                          grad_l1=grad_mass(torch.full((25,), 0.7), torch.zeros(35), "sdm"))


@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_float64(loss):
    case = make_case(5, 4, 3, "repeat", seed=11)
    xs = [case[k].clone().requires_grad_(True) for k in LEAVES]

    def f(*xs):
        rows, cols = contrast(*xs, case["labels_a"], case["labels_b"], loss=loss, backend="triton")
        return rows, cols

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# -- numerics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits(loss, scale):
    """|S| up to ~1e5 (a distance with a tiny temperature): no inf/NaN, and no worse than twice the
    error of the materialised reference run in float32 (fp32 logits carry an absolute error of
    ~|S|·1e-7 ≈ 1e-2, which every softmax-based output inherits; both are compared to float64)."""
    case = make_case(50, 40, 16, "repeat", seed=13, scale=scale, bias=-3.0)
    S = case["scale"] * (case["A"] @ case["B"].T + case["r"][:, None] + case["c"][None, :])
    assert S.abs().max().item() > 2e4
    check(case, torch.float32, loss, False)  # non-finite values fail there too


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("bias", OFFSET_BIASES)
def test_offset_logits_keep_p_exact(loss, bias):
    """float32 inputs, exact logits around ±1e5: the statistics are float64, so the backward's
    p = exp(S − LSE) is as exact as at |S| ~ 1 (helpers.offset_logit_problem)."""

    def fn(A, B, r, c, sc, bi, la, lb):
        return contrast(A, B, r, c, sc, bi, la, lb, loss=loss, exclude_self=False, backend="triton")

    check_offset_logits(fn, loss, bias, device=DEVICE)


@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
def test_deterministic(loss):
    case = make_case(130, 70, 100, "repeat", seed=17)
    first = run(case, torch.float32, loss, False)
    second = run(case, torch.float32, loss, False)
    for a, b in zip(first[:2], second[:2]):
        assert torch.equal(a, b)
    for k in LEAVES:
        assert torch.equal(first[2][k], second[2][k]), k


@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_nan_padding_is_never_read(loss):
    """Features inside NaN-filled buffers (padded rows and columns) give the same bits."""
    case = make_case(70, 50, 70, "repeat", seed=19)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"], loss, False]
    clean = torch.ops.uca.triton_contrast_forward(*args)

    def padded(x):
        buf = torch.full((x.shape[0] + 9, x.shape[1] + 13), float("nan"), dtype=x.dtype, device=x.device)
        buf[: x.shape[0], : x.shape[1]] = x
        return buf[: x.shape[0], : x.shape[1]]  # row stride E + 13, NaN after each row and below

    A, B = padded(args[0]), padded(args[1])
    assert A.stride(0) == A.shape[1] + 13
    dirty = torch.ops.uca.triton_contrast_forward(A, B, *args[2:])
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    grads = [torch.rand(70, device=DEVICE), torch.rand(50, device=DEVICE)]
    bw_clean = torch.ops.uca.triton_contrast_backward(*grads, *args[:8], *clean, loss, False)
    bw_dirty = torch.ops.uca.triton_contrast_backward(*grads, A, B, *args[2:8], *dirty, loss, False)
    for a, b in zip(bw_clean, bw_dirty):
        assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", LOSSES)
def test_low_precision_within_twice_reference_error(dtype, loss):
    """fp16/bf16 features: the fused error (vs float64 on the same rounded inputs) is at most twice
    the error of the reference computed in that dtype (under the interpreter the dot is widened to
    fp32, which is what the GPU's fp32 accumulation computes too)."""
    M, N, E = (1000, 1200, 300) if HAS_CUDA else (70, 90, 72)
    case = make_case(M, N, E, "repeat", seed=23)
    case["A"], case["B"] = case["A"].to(dtype).double(), case["B"].to(dtype).double()  # exact in dtype
    check(case, dtype, loss, False)  # also: the outputs have the reference's dtypes


# -- the chunked path: vendor GEMM in row chunks + Triton epilogues --------------------------------

# (labels, M, N, E, exclude_self): M != N both ways, every label pattern, exclude_self with M < N.
CHUNK_SHAPES = [("repeat", 37, 53, 20, False), ("one", 29, 17, 12, True), ("diag", 31, 31, 16, True),
                ("mixed", 45, 38, 24, False), ("repeat", 20, 45, 12, True)]
# a size dividing no M above; larger than every M (one chunk); 1 row per chunk on the smaller problems
CHUNK_CASES = [(*shape, rows) for shape in CHUNK_SHAPES for rows in (7, 1000)] + \
              [(*shape, 1) for shape in CHUNK_SHAPES if shape[1] * shape[2] < 800]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("labels,M,N,E,exclude_self,chunk_rows", CHUNK_CASES)
def test_chunked_matches_reference(labels, M, N, E, exclude_self, chunk_rows, loss):
    """Forward and every gradient in float32 against the float64 reference, ragged chunks included."""
    with gpu_chunking(chunk_rows=chunk_rows):
        check(make_case(M, N, E, labels, seed=41), torch.float32, loss, exclude_self)


@pytest.mark.parametrize("loss", LOSSES)
def test_chunked_float64_and_tiles_agree(loss):
    """float64 with 5-row chunks against the reference, and the tile kernels (chunk_rows < 0) on the
    same problem: both designs compute the same op."""
    case = make_case(23, 31, 9, "repeat", seed=43)
    with gpu_chunking(chunk_rows=5):
        chunked, _ = check(case, torch.float64, loss, True)
    with gpu_chunking(chunk_rows=-1):
        tiles, _ = check(case, torch.float64, loss, True)
    for a, b in zip(flat(chunked), flat(tiles)):
        assert (a - b).abs().max() <= 1e-12 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", LOSSES)
def test_chunked_low_precision_within_twice_reference_error(dtype, loss):
    """fp16/bf16 features in 16-row chunks (dT rounded to their dtype for the dA / dB GEMMs): within
    twice the error of the reference run in that dtype."""
    case = make_case(70, 90, 72, "repeat", seed=47)
    case["A"], case["B"] = case["A"].to(dtype).double(), case["B"].to(dtype).double()
    with gpu_chunking(chunk_rows=16):
        check(case, dtype, loss, False)


@pytest.mark.parametrize("loss", LOSSES)
def test_chunk_size_changes_results_only_within_float_floors(loss):
    """The same float32 problem with 3, 8 and 1000 rows per chunk: outputs agree within the float32
    floor (the GEMM's summation order may differ with its shape), and each chunk size reruns
    bit-identically."""
    case = make_case(40, 33, 24, "repeat", seed=53)
    outs = {}
    for rows in (3, 8, 1000):
        with gpu_chunking(chunk_rows=rows):
            first, second = run(case, torch.float32, loss, True), run(case, torch.float32, loss, True)
        for a, b in zip(flat(first), flat(second)):
            assert torch.equal(a, b), rows
        outs[rows] = flat(first)
    for rows in (3, 8):
        for a, b in zip(outs[rows], outs[1000]):
            assert (a - b).abs().max() <= FLOOR[torch.float32] * max(1.0, b.abs().max().item()), rows


def test_chunked_gradcheck_float64():
    case = make_case(6, 5, 4, "repeat", seed=59)
    x = [case[k].detach().requires_grad_() for k in LEAVES]
    for loss in LOSSES:
        with gpu_chunking(chunk_rows=4):
            assert torch.autograd.gradcheck(
                lambda *t: contrast(*t, case["labels_a"], case["labels_b"], loss=loss, exclude_self=True,
                                    reduction="none", backend="triton"), x)


@pytest.mark.parametrize("chunk_rows", [3, 1000])
def test_sigmoid_one_sweep_matches_reference(chunk_rows):
    """The scalar sigmoid loss's one sweep (3 GEMMs: ``triton_sigmoid_loss_and_grads``) against the
    float64 reference: the sum and every gradient; ``reduction="mean"`` takes it."""
    case = make_case(27, 35, 16, "mixed", seed=61)
    log = OpLog()
    outs = []
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        x = [case[k].to(dtype if k in ("A", "B") else (torch.float64 if dtype == torch.float64 else torch.float32))
             .detach().requires_grad_() for k in LEAVES]
        with gpu_chunking(chunk_rows=chunk_rows), log:
            total = contrast(*x, case["labels_a"], case["labels_b"], loss="sigmoid", exclude_self=True,
                             reduction="sum", backend=backend)
        outs.append([total, *torch.autograd.grad(total * 0.7, x)])
    assert any(f == torch.ops.uca.triton_sigmoid_loss_and_grads.default for f, _ in log.calls)
    for got, want in zip(*outs):
        assert (got.double() - want).abs().max() <= FLOOR[torch.float32] * max(1.0, want.abs().max().item())


def test_chunked_opcheck():
    case = make_case(9, 7, 5, "repeat", seed=67)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    for x in args[:6]:
        x.requires_grad_(True)
    for loss in LOSSES:
        torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*args, loss, True, "ieee", 4))
    plain = [a.detach() for a in args]
    out = torch.ops.uca.triton_contrast_forward(*plain, "sdm", False, "ieee", 4)
    grads = (torch.rand(9, device=DEVICE), torch.rand(7, device=DEVICE))
    torch.library.opcheck(torch.ops.uca.triton_contrast_backward.default,
                          (*grads, *plain, *out, "sdm", False, "ieee", 4))
    torch.library.opcheck(torch.ops.uca.triton_sigmoid_loss_and_grads.default, (*args, True, "ieee", 4))


def test_chunk_rows_rule():
    """The automatic chunk: the most rows whose scratch fits the budget, at least 512, a multiple of 64
    below M, at most M; gpu_chunking / UCA_CHUNK_ROWS / UCA_SCRATCH_MB choose it."""
    from uca_kernels._registry import auto_chunk_rows, resolve_chunk_rows

    gib = 1 << 30
    assert auto_chunk_rows(32768, 32768, torch.float32, gib) == 8192
    assert auto_chunk_rows(32768, 32768, torch.bfloat16, gib) == 5440  # 6 bytes per entry
    assert auto_chunk_rows(1 << 20, 1 << 20, torch.float32, gib) == 512  # floor of 512 rows
    assert auto_chunk_rows(300, 1 << 20, torch.float32, gib) == 300
    assert auto_chunk_rows(100, 100, torch.float64, gib) == 100
    with gpu_chunking(scratch_mb=64):
        assert resolve_chunk_rows(32768, 32768, torch.float32) == 512
    with gpu_chunking(chunk_rows=100):
        assert resolve_chunk_rows(50, 10, torch.float32) == 50
    with gpu_chunking(chunk_rows=-1):
        assert resolve_chunk_rows(50, 10, torch.float32) == -1
    with pytest.raises(ValueError, match="scratch_mb"):
        with gpu_chunking(scratch_mb=0):
            pass


def test_chunk_rows_environment(monkeypatch):
    from uca_kernels._registry import resolve_chunk_rows

    monkeypatch.setenv("UCA_CHUNK_ROWS", "12")
    assert resolve_chunk_rows(100, 10, torch.float32) == 12
    monkeypatch.setenv("UCA_CHUNK_ROWS", "")
    monkeypatch.setenv("UCA_SCRATCH_MB", "1")
    assert resolve_chunk_rows(4096, 4096, torch.float32) == 512
    monkeypatch.setenv("UCA_SCRATCH_MB", "lots")
    with pytest.raises(ValueError, match="UCA_SCRATCH_MB"):
        resolve_chunk_rows(10, 10, torch.float32)


# -- precision setting -----------------------------------------------------------------------------


def test_precision_setting(monkeypatch):
    monkeypatch.delenv("UCA_TRITON_PRECISION", raising=False)
    assert tc.get_input_precision() == "ieee"
    monkeypatch.setenv("UCA_TRITON_PRECISION", "tf32")
    assert tc.get_input_precision() == "tf32"
    try:
        tc.set_input_precision("tf32x3")
        assert tc.get_input_precision() == "tf32x3"
        with pytest.raises(ValueError, match="not one of"):
            tc.set_input_precision("fp8")
    finally:
        tc.set_input_precision(None)
    assert tc.get_input_precision() == "tf32"
    monkeypatch.setenv("UCA_TRITON_PRECISION", "half")
    with pytest.raises(ValueError, match="UCA_TRITON_PRECISION"):
        tc.get_input_precision()


@pytest.mark.parametrize("precision", [pytest.param(p, marks=gpu) for p in ("tf32", "tf32x3")])
@pytest.mark.parametrize("loss", LOSSES)
def test_tf32_precisions(precision, loss, monkeypatch):
    """tf32 (10-bit mantissa products) and tf32x3 (≈ fp32) against float64, with their stated floors
    (helpers.TF32_FLOOR). GPU only: the CPU interpreter ignores input_precision (its results are
    bit-identical to "ieee"), so there this would check nothing; test_precision_setting covers the
    setting's plumbing (environment variable, setter, bad values) everywhere."""
    monkeypatch.setenv("UCA_TRITON_PRECISION", precision)
    assert tc.get_input_precision() == precision
    check(make_case(70, 130, 100, "repeat", seed=29), torch.float32, loss, False, floor=TF32_FLOOR[precision])


# -- dispatch, registration, compile -------------------------------------------------------------


def test_auto_never_picks_triton_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("UCA_BACKEND", raising=False)
    x = torch.zeros(4, 3)
    assert dispatch.select("auto", A=x, B=x, loss="sdm", exclude_self=False).name != "triton"
    reasons = tc.not_supported_reasons(A=x, B=x, loss="sdm", exclude_self=False)
    assert reasons and "backend='triton'" in reasons[-1]
    monkeypatch.setattr(tc, "INTERPRET", False)
    reasons = tc.not_supported_reasons(A=x, B=x, loss="sdm", exclude_self=False, explicit=True)
    assert any("TRITON_INTERPRET=1" in m for m in reasons)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.select("triton", A=x, B=x, loss="sdm", exclude_self=False)


def test_unsupported_inputs_are_explained():
    x = torch.zeros(4, 3, dtype=torch.int32, device=DEVICE)
    reasons = tc.not_supported_reasons(A=x, B=x, loss="sdm", exclude_self=False, explicit=True)
    assert any("int32" in m for m in reasons)
    case = make_case(6, 5, 4)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    with pytest.raises(ValueError, match="labels_a must be an int64"):
        torch.ops.uca.triton_contrast_forward(*args[:6], args[6].int(), args[7], "sdm", True)
    with pytest.raises(ValueError, match="r must be a torch.float32"):
        torch.ops.uca.triton_contrast_forward(args[0], args[1], args[2].double(), *args[3:], "sdm", False)


@pytest.mark.skipif(HAS_CUDA, reason="CPU interpreter path")
def test_explicit_triton_on_cpu_under_interpreter(monkeypatch):
    assert tc.INTERPRET
    x = torch.zeros(4, 3)
    assert tc.not_supported_reasons(A=x, B=x, loss="sdm", exclude_self=False, explicit=True) == []
    case = make_case(12, 12, 6, "diag", device="cpu")
    monkeypatch.setenv("UCA_BACKEND", "triton")  # the environment variable is an explicit choice too
    assert dispatch.select("auto", A=x, B=x, loss="sdm", exclude_self=False).name == "triton"
    args = [case[k].float() for k in LEAVES]
    rows, cols = contrast(*args, loss="infonce")
    want = contrast_reference(*[case[k] for k in LEAVES], torch.arange(12), torch.arange(12), "infonce")
    assert max_rel_err(rows, want[0]) <= FLOOR[torch.float32] and max_rel_err(cols, want[1]) <= FLOOR[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_auto_picks_triton_for_cuda_without_cuda_extension(monkeypatch):
    monkeypatch.delenv("UCA_BACKEND", raising=False)
    x = torch.zeros(4, 3, device="cuda")
    chosen = dispatch.select("auto", A=x, B=x, loss="sdm", exclude_self=False).name
    reasons = dispatch.auto_reasons(A=x, B=x, loss="sdm", exclude_self=False)  # self-test verdicts included
    assert chosen == ("cuda" if not reasons["cuda"] else "triton"), reasons


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_triton_passes_its_selftest_on_the_gpu():
    """What 'auto' runs (in a child process) before it first sends CUDA tensors to these kernels."""
    from uca_kernels import selftest

    v = selftest.run_selftest("triton", "cuda")
    assert v.ok, v.reason + "\n" + "\n".join(v.details)


def test_opcheck():
    case = make_case(9, 7, 5, "repeat", seed=31)
    args = [case[k].float() for k in LEAVES] + [case["labels_a"], case["labels_b"]]
    for x in args[:6]:
        x.requires_grad_(True)
    torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*args, "sdm", False))
    torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*args, "infonce", False))
    torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*args, "sigmoid", False))
    sq = make_case(8, 8, 5, "repeat", seed=32)
    sq_args = [sq[k].float() for k in LEAVES] + [sq["labels_a"], sq["labels_b"]]
    torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*sq_args, "sdm", True))
    torch.library.opcheck(torch.ops.uca.triton_contrast_forward.default, (*sq_args, "sigmoid", True))
    plain = [a.detach() for a in args]
    out = torch.ops.uca.triton_contrast_forward(*plain, "sdm", False)
    grads = (torch.rand(9, device=DEVICE), torch.rand(7, device=DEVICE))
    torch.library.opcheck(torch.ops.uca.triton_contrast_backward.default, (*grads, *plain, *out, "sdm", False))
    out = torch.ops.uca.triton_contrast_forward(*plain, "sigmoid", False)
    torch.library.opcheck(torch.ops.uca.triton_contrast_backward.default, (*grads, *plain, *out, "sigmoid", False))


@pytest.mark.parametrize("compile_backend", [
    "aot_eager",
    pytest.param("inductor", marks=[*gpu, pytest.mark.slow]),
])
def test_torch_compile_fullgraph(compile_backend):
    """The public function traces in one graph through the registered op (fake kernel + autograd).
    On CPU only ``aot_eager``: inductor's C++ build alone takes ~35 s cold; GPU runs add inductor."""
    case = make_case(20, 20, 12, "repeat", seed=37)
    x = {k: case[k].float().requires_grad_(True) for k in LEAVES}

    def f(A, B, r, c, scale, bias):
        rows, cols = contrast(A, B, r, c, scale, bias, case["labels_a"], case["labels_b"],
                              loss="sdm", backend="triton")
        return rows.mean() + 0.5 * cols.mean()

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    out = compiled(*[x[k] for k in LEAVES])
    got = torch.autograd.grad(out, [x[k] for k in LEAVES])
    eager = f(*[x[k] for k in LEAVES])
    want = torch.autograd.grad(eager, [x[k] for k in LEAVES])
    assert torch.allclose(out, eager, rtol=1e-6, atol=1e-6)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)


# -- GPU only --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("M,N,E,exclude_self", [(1031, 2053, 1000, False), (2048, 2048, 256, True),
                                                 (4096, 4096, 64, False), (3, 5000, 17, False)])
def test_gpu_larger_sizes(M, N, E, exclude_self, loss):
    check(make_case(M, N, E, "repeat", seed=41), torch.float32, loss, exclude_self)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_float64_and_autotuned_determinism():
    case = make_case(700, 900, 300, "repeat", seed=43)
    check(case, torch.float64, "sdm", False)
    first, second = run(case, torch.float32, "infonce", False), run(case, torch.float32, "infonce", False)
    assert all(torch.equal(a, b) for a, b in zip(first[:2], second[:2]))
    assert all(torch.equal(first[2][k], second[2][k]) for k in LEAVES)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_peak_extra_memory_below_one_percent_of_reference():
    """Memory beyond inputs and gradients during forward + backward: O((M + N)·E) for the fused op
    (stats, per-row partial sums) against the reference's O(M·N) logits and softmax."""
    M = N = 8192
    case = make_case(M, N, 256, "repeat", seed=47)
    extra = {}
    for backend in ("triton", "reference"):
        run(case, torch.float32, "sdm", False, backend=backend)  # warm-up: autotuning, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _, _, grads = run(case, torch.float32, "sdm", False, backend=backend)
        torch.cuda.synchronize()
        outputs = sum(g.numel() * g.element_size() for g in grads.values())
        extra[backend] = torch.cuda.max_memory_allocated() - base - outputs
        del grads
    assert extra["triton"] <= 0.01 * extra["reference"], extra


@pytest.mark.parametrize("loss", ["sdm", "infonce", "sigmoid"])
def test_small_upstream_gradients_do_not_underflow_fp16(loss):
    """Mean-reduced losses at large B make |scale·dS| of a negative pair ~ g/N (1.5e-8 at B = 8192,
    g = 1/B), below fp16's smallest subnormal once dT is rounded for the dX GEMM, while their sum in
    dA = dT·B is representable and, for features that share a direction (real embeddings do), cancels
    most of the positive pair's term. The backward runs on power-of-two-scaled upstream gradients
    (_registry.grad_prescale) and divides its outputs back. Here N = 2048, nearly uniform p (scale
    0.05) and g ~ 1e-5 put the negatives' dT near 5e-9: dA must be within twice the error of the
    float64 oracle's own rounding to fp16. Without the pre-scaling the errors were 15-75x that
    (6.7e-2 / 1.3e-2 / 3.6e-3 for sdm / infonce / sigmoid against 8.9e-4 / 2.8e-4 / 2.7e-4)."""
    M, N, E = 8, 2048, 16
    case = make_case(M, N, E, seed=5, scale=0.05)
    g = torch.Generator().manual_seed(9)
    common = torch.randn(E, generator=g, dtype=torch.float64)
    for key, n in (("A", M), ("B", N)):  # a shared direction plus a little noise, exactly representable in fp16
        case[key] = (common + 0.1 * torch.randn(n, E, generator=g, dtype=torch.float64)).half().double().to(DEVICE)
    gr, gc = (1e-5 * x for x in upstream(M, N))
    got = run(case, torch.float16, loss, False, requires=("A",), grads=(gr, gc))[2]["A"].double()
    want = oracle(case, loss, False, requires=("A",), grads=(gr, gc))[2]["A"]
    size = float(want.abs().max())
    err = float((got - want).abs().max()) / size
    err_rounding = float((want.half().double() - want).abs().max()) / size
    assert err <= 2 * err_rounding, (err, err_rounding)


def test_backward_gets_the_forward_precision_and_chunk_rows():
    """The precision and chunk rows read at the forward (set_input_precision / UCA_TRITON_PRECISION,
    gpu_chunking / UCA_CHUNK_ROWS) are op arguments that autograd hands to the backward: changing
    the settings between a forward and its backward does not change the logits the backward recomputes."""
    case = make_case(9, 7, 16, seed=4)
    A = case["A"].float().requires_grad_()
    args = (A, case["B"].float(), *(case[k].float() for k in ("r", "c", "scale", "bias")),
            case["labels_a"], case["labels_b"])
    log = OpLog()
    try:
        tc.set_input_precision("tf32x3")
        with log:
            with gpu_chunking(chunk_rows=4):
                rows, cols = tc.contrast(*args, "sdm", False)
            tc.set_input_precision("ieee")
            with gpu_chunking(chunk_rows=-1):
                (rows.sum() + cols.sum()).backward()
    finally:
        tc.set_input_precision(None)
    backward = [a for func, a in log.calls if func == torch.ops.uca.triton_contrast_backward.default]
    assert len(backward) == 1 and tuple(backward[0][-2:]) == ("tf32x3", 4), [a[-2:] for a in backward]


def test_tile_candidates_are_pruned():
    """Autotune candidates: those of the dot path (fp16/bf16, tf32, ieee fp32, fp64), none with
    BLOCK_E far above E, never an empty list."""
    configs = [triton.Config({"BLOCK_A": a, "BLOCK_B": b, "BLOCK_E": e}, num_warps=w, num_stages=s)
               for a, b, e, w, s, _ in tc._GPU_TILES]
    x = {dt: torch.zeros(1, 1, dtype=dt) for dt in (torch.float32, torch.bfloat16, torch.float64)}
    for dtype, precision, path in [(torch.float32, "ieee", "ieee"), (torch.float32, "tf32", "tf32"),
                                   (torch.float32, "tf32x3", "tf32"), (torch.bfloat16, "ieee", "f16"),
                                   (torch.float64, "ieee", "f64")]:
        want = {(a, b, e, w, s) for a, b, e, w, s, paths in tc._GPU_TILES if path in paths}
        wide = tc._prune_tiles(configs, {"E": 1024, "a_ptr": x[dtype]}, PRECISION=precision)
        assert {(c.kwargs["BLOCK_A"], c.kwargs["BLOCK_B"], c.kwargs["BLOCK_E"], c.num_warps, c.num_stages)
                for c in wide} == want, (dtype, precision)
        narrow = tc._prune_tiles(configs, {"E": 8, "a_ptr": x[dtype]}, PRECISION=precision)
        assert narrow and all(c.kwargs["BLOCK_E"] == min(c2.kwargs["BLOCK_E"] for c2 in wide) for c in narrow)
