"""Shared helpers for the kernel tests: random problems and error checks against float64."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from uca_kernels.contrast import contrast_reference
from uca_kernels.selftest import FLOAT32_FLOOR
from uca_kernels.selftest import TF32_FLOOR as SELFTEST_TF32_FLOOR

GRAD_NAMES = ("A", "B", "r", "c", "scale", "bias")

# -- stated tolerances, shared by every fused backend's tests (cpu, triton, cuda) ------------------
# The floor of assert_matches_oracle: an output's error against float64, relative to its largest
# magnitude, may always be this large (otherwise at most twice the same-dtype reference's error).
# float32 sums thousands of exp terms per row and the SDM backward reuses the float32 row loss, so
# its error is up to a few 1e-5 of the largest gradient (as is the float32 reference's own); float64
# is near machine precision. fp16/bf16 features are computed in float32: they use the float32 floor.
FLOOR = {torch.float32: FLOAT32_FLOOR, torch.float64: 1e-10}  # float32: the self-test's floor too
# Triton on a GPU with input_precision="tf32" (float32 features): the dot's inputs are rounded to a
# 10-bit mantissa (unit roundoff 2^-11 ~ 4.9e-4), so a logit |scale|·|a||b| ~ 3 carries ~3e-3 of
# absolute error, which the losses and gradients inherit and the (ieee) float32 reference does not
# share: a floor of its own. "tf32x3" splits each input into two tf32 parts and keeps three of the
# four products (the dropped one is ~u^2 ~ 2.4e-7): float32-like, twice the float32 floor.
TF32_FLOOR = {"tf32": SELFTEST_TF32_FLOOR, "tf32x3": 2 * FLOAT32_FLOOR}


def make_problem(M, N, E, *, labels="repeats", dtype=torch.float32, scale=-0.5, bias=0.25, seed=0,
                 exclude_self=False, spread=1.0, device="cpu"):
    """Random (A, B, r, c, scale, bias, labels_a, labels_b) in float64 (cast later)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M, E, generator=g, dtype=torch.float64) * spread / E**0.5
    B = torch.randn(N, E, generator=g, dtype=torch.float64) * spread / E**0.5
    r = torch.randn(M, generator=g, dtype=torch.float64)
    c = torch.randn(N, generator=g, dtype=torch.float64)
    n_ids = {"unique": max(M, N) * 10, "repeats": max(1, M // 3), "one": 1}[labels]
    la = torch.randint(0, n_ids, (M,), generator=g)
    lb = la.clone() if (exclude_self or M == N and labels != "unique") else torch.randint(0, n_ids, (N,), generator=g)
    if labels == "unique":
        la = torch.randperm(n_ids, generator=g)[:M]
        lb = la.clone() if exclude_self or M == N else torch.randperm(n_ids, generator=g)[:N]
    if exclude_self and M != N:  # row i is column i for i < min(M, N): one list of identities cut twice
        ids = (torch.randperm(n_ids, generator=g) if labels == "unique"
               else torch.randint(0, n_ids, (max(M, N),), generator=g))[:max(M, N)]
        la, lb = ids[:M].clone(), ids[:N].clone()
    sc = torch.tensor(float(scale), dtype=torch.float64)
    bi = torch.tensor(float(bias), dtype=torch.float64)
    return [t.to(device) for t in (A, B, r, c, sc, bi, la, lb)]


def run_with_grads(fn, tensors, grad_rows, grad_cols, dtype, requires=(True,) * 6):
    """Call ``fn(A, B, r, c, scale, bias, la, lb)`` on copies cast to ``dtype`` and return
    (rows, cols, grads...) in float64; grads of inputs not requiring grad are None."""
    A, B, r, c, sc, bi, la, lb = tensors
    rc_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    leaves = [A.to(dtype), B.to(dtype), r.to(rc_dtype), c.to(rc_dtype), sc.to(rc_dtype), bi.to(rc_dtype)]
    leaves = [x.detach().requires_grad_(req) for x, req in zip(leaves, requires)]
    rows, cols = fn(*leaves, la, lb)
    total = (rows.double() * grad_rows).sum() + (cols.double() * grad_cols).sum()
    need = [x for x in leaves if x.requires_grad]
    grads = iter(torch.autograd.grad(total, need)) if need else iter(())
    out = [rows.double().detach(), cols.double().detach()]
    out += [next(grads).double() if x.requires_grad else None for x in leaves]
    return out


def reference_fn(loss, exclude_self):
    def fn(A, B, r, c, sc, bi, la, lb):
        if A.dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()
        return contrast_reference(A, B, r, c, sc, bi, la, lb, loss, exclude_self)

    return fn


def grad_mass(g_rows, g_cols, loss) -> float:
    """The ``grad_l1`` of assert_matches_oracle, a bound on Σ|dS| (the scale of dbias's rounding
    error): Σ|g_row| + Σ|g_col| for the softmax losses (Σⱼ|∂Lᵢ/∂Sᵢⱼ| ≤ 2), N·Σ|g_row| + M·Σ|g_col|
    for sigmoid (|∂ℓᵢⱼ/∂Sᵢⱼ| ≤ 1 on every pair)."""
    g_rows, g_cols = g_rows.double(), g_cols.double()
    if loss == "sigmoid":
        return float(len(g_cols) * g_rows.abs().sum() + len(g_rows) * g_cols.abs().sum())
    return float(g_rows.abs().sum() + g_cols.abs().sum())


def max_rel_err(x: torch.Tensor, ref: torch.Tensor, scale: float | None = None) -> float:
    """max |x - ref| / max(max |ref|, 1e-2), or / ``scale`` when given."""
    denom = float(ref.abs().max().clamp_min(1e-2)) if scale is None else scale
    return float((x - ref).abs().max()) / denom


def shift_masses(M: int, N: int, loss: str, scale: float, grad_l1: float) -> dict[str, float]:
    """Gradients that, besides dbias, are exactly 0 by the softmax losses' shift invariance, with
    the mass their rounding error is measured against (``mass=`` of assert_matches_oracle).

    dr_i = scale·Σⱼ dS_ij. Each row loss is invariant to a shift of its own row, so only the column
    losses feed dr; with M = 1 each column's softmax has one entry and those vanish too: dr = scale·dbias
    = 0 (likewise dc when N = 1). Its value is then rounding noise of a cancelling sum in both the
    fused op and the same-dtype reference (their ratio varies ~0.1x-10x with the seed), so it is
    measured like dbias, against |scale|·grad_l1. The sigmoid loss has no such invariance."""
    if loss == "sigmoid":
        return {}
    return {name: abs(float(scale)) * grad_l1 for name, n in (("r", M), ("c", N)) if n == 1}


def scale_mass(A, B, r, c, grad_l1: float) -> dict[str, float]:
    """The ``mass=`` entry for dscale = Σᵢⱼ dSᵢⱼ·tᵢⱼ (t = ⟨aᵢ, bⱼ⟩ + rᵢ + cⱼ): a sum that cancels
    (Σⱼ dSᵢⱼ = 0 for the softmax losses), so its rounding error scales with Σ|dS|·max|t| ≤
    grad_l1·max|t|, not with |dscale|. Measured against its own value, the float32 error of a
    cancelling dscale depends on the GEMM's rounding, which differs between BLAS code paths
    (it passed on Intel and failed on an AMD EPYC at 5.6e-5 against a 5e-5 floor)."""
    A, B, r, c = (x.double().cpu() for x in (A, B, r, c))
    t_max = float((A @ B.T + r[:, None] + c[None, :]).abs().max())
    return {"scale": grad_l1 * max(t_max, 1e-2)}


def assert_matches_oracle(fused, oracle64, ref_same_dtype, *, floor: float, grad_l1: float = 1.0,
                          names=("loss_rows", "loss_cols") + GRAD_NAMES, mass: dict[str, float] | None = None):
    """Each output's error vs float64 must be ≤ max(2 × the same-dtype reference's error, floor).

    Errors are relative to the output's largest magnitude, except the bias gradient: both losses
    are invariant to a common shift of the logits, so dbias is exactly 0 and its rounding error is
    measured relative to ``grad_l1`` (Σ|grad_rows| + Σ|grad_cols|, which bounds Σ|dS| up to a
    small constant). ``mass`` (name -> scale) measures further outputs that way (shift_masses)."""
    masses = {"bias": grad_l1, **(mass or {})}
    for name, x, x64, xr in zip(names, fused, oracle64, ref_same_dtype):
        if x is None or x64 is None:
            assert x is None and x64 is None, f"{name}: gradient presence differs"
            continue
        assert torch.isfinite(x).all(), f"{name}: non-finite values"
        scale = masses.get(name)
        err, err_ref = max_rel_err(x, x64, scale), max_rel_err(xr, x64, scale)
        assert err <= max(2 * err_ref, floor), f"{name}: error {err:.3g} > max(2 x reference {err_ref:.3g}, {floor:g})"


class OpLog(TorchDispatchMode):
    """Records every op call (overload, positional args) that reaches the dispatcher's Python mode,
    autograd's backward calls included."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


# -- logits far from zero: the statistics' own precision -------------------------------------------
OFFSET_BIASES = (1e5, -1e5)


def stats_oracle(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The op's statistics of each row of the float64 logits S [K, L] (all valid) with positives
    ``pos``: [K, 4] = (LSE, LSEᴾ, n, Σ p·(S − LSE))."""
    S = S.double()
    lse = S.logsumexp(1)
    logp = S - lse[:, None]
    return torch.stack([lse, S.masked_fill(~pos, float("-inf")).logsumexp(1), pos.sum(1).double(),
                        (logp.exp() * logp).sum(1)], 1)


def offset_logit_problem(M: int, N: int, E: int, *, bias: float, seed: int = 0, device="cpu"):
    """A problem whose float32 logits are exact, around a large common offset ``bias``.

    Features in {−1, −½, 0, ½, 1}, r and c multiples of ¼ in [−2, 2], scale 2: every product and
    partial sum is a small multiple of ¼ (exact in float32, in TF32 and in any summation order),
    and S = 2·t + bias needs 18 significant bits at |bias| = 1e5. So the float32 and float64 logits
    agree bit for bit, and any error left is the statistics'. The softmax losses are invariant to
    the offset, but at |S| ~ 1e5 float32's spacing is 2⁻⁷: an LSE rounded to float32 is off by up
    to 2⁻⁸ ≈ 4e-3, every p = exp(S − LSE) of its row by that factor, and so is the gradient."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randint(-2, 3, (M, E), generator=g).double() / 2
    B = torch.randint(-2, 3, (N, E), generator=g).double() / 2
    r = torch.randint(-8, 9, (M,), generator=g).double() / 4
    c = torch.randint(-8, 9, (N,), generator=g).double() / 4
    la = torch.randint(0, max(1, M // 3), (M,), generator=g)
    lb = torch.randint(0, max(1, M // 3), (N,), generator=g)
    sc = torch.tensor(2.0, dtype=torch.float64)
    bi = torch.tensor(float(bias), dtype=torch.float64)
    return [t.to(device) for t in (A, B, r, c, sc, bi, la, lb)]


def check_offset_logits(fused_fn, loss: str, bias: float, *, M: int = 64, N: int = 48, E: int = 16, device="cpu"):
    """``fused_fn`` (as run_with_grads takes it) in float32 on offset_logit_problem against the
    float64 oracle with the float32 floor alone: the float32 reference is no yardstick here, as it
    rounds its own LSE to float32 and shifts p the same way."""
    tensors = offset_logit_problem(M, N, E, bias=bias, device=device)
    S = tensors[4] * (tensors[0] @ tensors[1].T + tensors[2][:, None] + tensors[3][None, :]) + tensors[5]
    assert torch.equal(S.float().double(), S)  # the logits are exact in float32
    g = torch.Generator().manual_seed(1)
    gr = torch.randn(M, generator=g, dtype=torch.float64).to(device)
    gc = torch.randn(N, generator=g, dtype=torch.float64).to(device)
    oracle = run_with_grads(reference_fn(loss, False), tensors, gr, gc, torch.float64)
    fused = run_with_grads(fused_fn, tensors, gr, gc, torch.float32)
    mass = grad_mass(gr, gc, loss)
    assert_matches_oracle(fused, oracle, oracle, floor=FLOOR[torch.float32], grad_l1=mass,
                          mass=scale_mass(*tensors[:4], mass))


def check_split_rows(fwd_op, bwd_op, loss: str, *, dtype=torch.float64, parts: int = 3, device="cpu",
                     tol: float = 1e-10):
    """The op on the rows split into ``parts`` shares, each against all columns (a data-parallel
    rank's local rows against the gathered columns), with uca_kernels.contrast.combine_stats of the
    shares' column statistics, gives the whole problem's column losses and statistics, and each
    share's backward fed the combined ones gives that share's rows of dA, and dB, dr... summed over
    the shares, of the whole backward (errors relative to each output's largest magnitude)."""
    from uca_kernels.contrast import combine_stats

    M, N, E = 30 * parts, 40, 12
    A, B, r, c, sc, bi, la, lb = make_problem(M, N, E, labels="repeats", seed=4)
    lb = lb + 1  # some columns without positives in some shares (or in all)
    A, B, r, c, sc, bi = (x.to(dtype).to(device) for x in (A, B, r, c, sc, bi))
    la, lb = la.to(device), lb.to(device)
    g = torch.Generator().manual_seed(5)
    g_rows, g_cols = (torch.randn(n, generator=g, dtype=torch.float64).to(dtype).to(device) for n in (M, N))
    rows, cols, rs, cs = fwd_op(A, B, r, c, sc, bi, la, lb, loss, False)
    whole = bwd_op(g_rows, g_cols, A, B, r, c, sc, bi, la, lb, rows, cols, rs, cs, loss, False)
    shares = [slice(k * 30, (k + 1) * 30) for k in range(parts)]
    outs = [fwd_op(A[s], B, r[s], c, sc, bi, la[s], lb, loss, False) for s in shares]
    stats, losses = combine_stats(torch.stack([o[3] for o in outs]), loss)
    finite = torch.isfinite(cs)
    assert torch.equal(finite, torch.isfinite(stats))
    assert max_rel_err(stats[finite], cs[finite]) <= tol and max_rel_err(losses.double(), cols.double()) <= tol
    grads = [bwd_op(g_rows[s], g_cols, A[s], B, r[s], c, sc, bi, la[s], lb, o[0], losses.to(cols.dtype), o[2], stats,
                    loss, False) for s, o in zip(shares, outs)]
    dA = torch.cat([gr[0] for gr in grads])
    dr = torch.cat([gr[2] for gr in grads])
    summed = [sum(gr[k].double() for gr in grads) for k in (1, 3, 4, 5)]
    for name, got, want in (("dA", dA, whole[0]), ("dr", dr, whole[2]), ("dB", summed[0], whole[1]),
                            ("dc", summed[1], whole[3])):
        assert max_rel_err(got.double(), want.double()) <= tol, name
    # dscale cancels (Σⱼ dSᵢⱼ = 0): measured against grad_l1·max|t| (scale_mass), not its own value
    dscale_scale = scale_mass(A, B, r, c, grad_mass(g_rows, g_cols, loss))["scale"]
    assert abs(float(summed[2]) - float(whole[4])) <= tol * dscale_scale, "dscale"
    assert abs(float(summed[3]) - float(whole[5])) <= tol * float(g_rows.abs().sum() + g_cols.abs().sum()), "dbias"


def check_row_shares(backend: str, loss: str, *, dtype=torch.float64, shares: int = 3, device="cpu",
                     tol: float = 1e-10):
    """uca_kernels.contrast_row_share on ``shares`` row shares (an all-gather and an all-reduce
    simulated in one process) against contrast() on the whole problem: rows, columns and every
    gradient of J = Σᵢ wᵢ·rowsᵢ + Σⱼ vⱼ·colsⱼ, each share counting 1/shares of the column term."""
    import uca_kernels as uk
    from uca_kernels import dispatch

    M, N, E = 25 * shares, 40, 12
    A, B, r, c, sc, bi, la, lb = make_problem(M, N, E, labels="repeats", seed=6, scale=2.0)
    A, B, r, c, sc, bi = (x.to(dtype).to(device) for x in (A, B, r, c, sc, bi))
    la, lb = la.to(device), lb.to(device)
    g = torch.Generator().manual_seed(7)
    w, v = (torch.randn(n, generator=g, dtype=torch.float64).to(dtype).to(device) for n in (M, N))

    def leaves():
        return [x.clone().requires_grad_() for x in (A, B, r, c, sc, bi)]

    xs = leaves()
    rows, cols = uk.contrast(*xs[:6], la, lb, loss=loss, backend=backend)
    whole = [rows.detach(), cols.detach(), *torch.autograd.grad((rows * w).sum() + (cols * v).sum(), xs)]

    cut = [slice(k * 25, (k + 1) * 25) for k in range(shares)]
    forward, _ = dispatch.select(backend, A=A, B=B, loss=loss, exclude_self=False).op_pair()
    parts = [forward(A[s], B, r[s], c, sc, bi, la[s], lb, loss)[3] for s in cut]
    got_rows, got_grads = [], []
    for k, s in enumerate(cut):
        xs = leaves()
        rows_k, cols_k = uk.contrast_row_share(
            xs[0][s], xs[1], xs[2][s], xs[3], xs[4], xs[5], la[s], lb, loss=loss, backend=backend,
            gather_stats=lambda part, k=k: torch.stack([part if i == k else p for i, p in enumerate(parts)]),
            sum_col_grads=lambda gc: gc * shares)
        assert max_rel_err(cols_k.double(), whole[1].double()) <= tol, f"share {k}: column losses"
        got_rows.append(rows_k.detach())
        total = (rows_k * w[s]).sum() + (cols_k * v).sum() / shares
        got_grads.append(torch.autograd.grad(total, xs))
    assert max_rel_err(torch.cat(got_rows).double(), whole[0].double()) <= tol, "row losses"
    for name, k in (("dA", 0), ("dB", 1), ("dr", 2), ("dc", 3), ("dscale", 4)):
        got = sum(gr[k].double() for gr in got_grads)  # each share's rows: zero elsewhere for dA, dr
        assert max_rel_err(got, whole[2 + k].double()) <= tol, name
    db = sum(float(gr[5]) for gr in got_grads)
    assert abs(db - float(whole[7])) <= tol * float(w.abs().sum() + v.abs().sum()), "dbias"
