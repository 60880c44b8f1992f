"""The data-parallel contrastive losses equal the single-process loss on the concatenated batch.

Two gloo processes on the CPU (torch.multiprocessing.spawn, file:// rendezvous in tmp_path), float64,
the materialised ``reference`` backend and the fused ``cpu`` backend (where the extension is built),
both against the single-process reference. Checked: loss values (mean over ranks), gradients of each
rank's inputs (``W · ∂L/∂x_k``, see uca_model.distributed), and parameter gradients after
DistributedDataParallel's averaging. The pairwise ``sigmoid`` case (with a logit bias) checks that
every global pair is counted once over the ranks; the intra-modal terms run as local rows against
the gathered columns (local first, ``exclude_self`` on a rectangular problem). Unequal local
batches raise a named error on every rank.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import uca_kernels as uk
from uca_kernels._registry import N_STATS
from uca_model.distributed import BackendMismatchError, DistContext, UnequalBatchError, check_same_backend
from uca_model.losses import cosine_contrast_loss, dcl_loss, pcl_loss

WORLD = 2
B_LOCAL, D, K, IN = 4, 6, 3, 5
CASES = [("w2", "sdm"), ("kl", "infonce"), ("csd", "sdm"), ("csd", "sigmoid")]
BACKENDS = ["reference"] + (["cpu"] if uk._ext.has_op("contrast_forward") else [])


def _bias(loss):
    """A logit bias for the sigmoid case (the softmax losses do not depend on one)."""
    return -1.5 if loss == "sigmoid" else 0.0


def _data():
    g = torch.Generator().manual_seed(0)
    B = WORLD * B_LOCAL
    mu_v = torch.randn(B, D, generator=g, dtype=torch.float64)
    lv_v = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.0
    mu_t = mu_v + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    lv_t = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.0
    labels = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])  # identities shared across the two ranks
    eps_v = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    eps_t = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    x = torch.randn(B, IN, generator=g, dtype=torch.float64)
    return mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, x


def _losses(mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, ctx, metric, loss, backend="reference"):
    """Every distributed term on (local) inputs: dict name -> scalar."""
    bias = _bias(loss)
    out = {"dcl": dcl_loss(mu_v, lv_v, mu_t, lv_t, labels, metric=metric, loss=loss, scale=0.7, bias=bias,
                           backend=backend, ctx=ctx)}
    zv = uk.losses.sample_points(mu_v, lv_v, K, eps_v)
    zt = uk.losses.sample_points(mu_t, lv_t, K, eps_t)
    p = pcl_loss(zv, zt, labels.repeat_interleave(K), similarity="cosine", scale=5.0, loss=loss, bias=bias,
                 intra=True, backend=backend, ctx=ctx)
    out.update({f"pcl_{k}": v for k, v in p.items()})
    pe = pcl_loss(zv, zt, labels.repeat_interleave(K), similarity="euclidean", scale=0.5, loss=loss, bias=bias,
                  intra=True, backend=backend, ctx=ctx)
    out.update({f"pcl_euclid_{k}": v for k, v in pe.items()})
    out["baseline"] = cosine_contrast_loss(mu_v, mu_t, labels, scale=4.0, loss=loss, bias=bias, backend=backend,
                                           ctx=ctx)
    return out


def _head(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Linear(IN, 4 * D).double()


def _head_loss(head, x, labels, eps_v, eps_t, ctx, metric, loss, backend):
    h = head(x)
    mu_v, lv_v, mu_t, lv_t = h.split(D, dim=1)
    terms = _losses(mu_v, lv_v - 1.0, mu_t, lv_t - 1.0, labels, eps_v, eps_t, ctx, metric, loss, backend)
    return sum(terms.values())


def _count_size_exchanges(ctx, mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, rank):
    """{equal_batches: (size all-gathers, loss values)} of the DCL + PCL terms: the size exchange is
    the one all-gather of a single int64 (read on the host: a sync on a GPU)."""
    real, out = dist.all_gather, {}
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    for trusted in (False, True):
        calls = []

        def counting(tensor_list, tensor, *args, **kwargs):
            calls.append(tensor.dtype == torch.int64 and tensor.numel() == 1)
            return real(tensor_list, tensor, *args, **kwargs)

        dist.all_gather = counting
        try:
            terms = _losses(mu_v[sl], lv_v[sl], mu_t[sl], lv_t[sl], labels[sl], eps_v[sl], eps_t[sl],
                            dataclasses.replace(ctx, equal_batches=trusted), "w2", "sdm")
        finally:
            dist.all_gather = real
        out[trusted] = (sum(calls), {k: v.detach() for k, v in terms.items()})
    return out


def _count_point_gathers(ctx, mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, rank):
    """(point all-gathers, statistics all-gathers, all-reduces) of one pcl_loss call with intra terms
    and its backward, per loss (the default backend: the fused cpu one)."""
    real_gather, real_reduce, out = dist.all_gather, dist.all_reduce, {}
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    for loss in ("sdm", "sigmoid"):
        calls = {"gather": 0, "stats": 0, "reduce": 0}

        def gather(tensor_list, tensor, *args, **kwargs):
            is_stats = tensor.dim() == 2 and tensor.shape[1] == N_STATS and tensor.shape[1] != D
            calls["stats" if is_stats else "gather"] += tensor.is_floating_point()
            return real_gather(tensor_list, tensor, *args, **kwargs)

        def reduce(tensor, *args, **kwargs):
            calls["reduce"] += 1
            return real_reduce(tensor, *args, **kwargs)

        dist.all_gather, dist.all_reduce = gather, reduce
        try:
            mu = mu_v[sl].clone().requires_grad_()
            zv = uk.losses.sample_points(mu, lv_v[sl], K, eps_v[sl])
            zt = uk.losses.sample_points(mu_t[sl], lv_t[sl], K, eps_t[sl])
            terms = pcl_loss(zv, zt, labels[sl].repeat_interleave(K), loss=loss, bias=_bias(loss), intra=True,
                             ctx=ctx)
            sum(terms.values()).backward()
        finally:
            dist.all_gather, dist.all_reduce = real_gather, real_reduce
        out[loss] = (calls["gather"], calls["stats"], calls["reduce"])
    return out


def _count_pairs(ctx, mu_v, lv_v, mu_t, lv_t, labels, rank):
    """Logit pairs the fused cpu backend's forward passes cover in one dcl_loss call, per loss."""
    from uca_kernels import backends

    real_pair, real_contrast, out = backends._op_pair, backends.ExtensionBackend.contrast, {}
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    for loss in ("sdm", "infonce", "sigmoid"):
        pairs = [0]

        def op_pair(*args, **kwargs):
            forward, backward = real_pair(*args, **kwargs)

            def counted(A, B, *rest):
                pairs[0] += A.shape[0] * B.shape[0]
                return forward(A, B, *rest)

            return counted, backward

        def contrast(self, A, B, *rest):
            pairs[0] += A.shape[0] * B.shape[0]
            return real_contrast(self, A, B, *rest)

        backends._op_pair, backends.ExtensionBackend.contrast = op_pair, contrast
        try:
            dcl_loss(mu_v[sl], lv_v[sl], mu_t[sl], lv_t[sl], labels[sl], loss=loss, bias=_bias(loss), backend="cpu",
                     ctx=ctx)
        finally:
            backends._op_pair, backends.ExtensionBackend.contrast = real_pair, real_contrast
        out[loss] = pairs[0]
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = DistContext.current()
        assert ctx == DistContext(rank, WORLD)
        mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, x = _data()
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for backend, (metric, loss) in ((b, c) for b in BACKENDS for c in CASES):
            leaves = [t[sl].clone().requires_grad_() for t in (mu_v, lv_v, mu_t, lv_t)]
            terms = _losses(*leaves, labels[sl], eps_v[sl], eps_t[sl], ctx, metric, loss, backend)
            grads = {}
            for name, value in terms.items():
                gs = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
                grads[name] = [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, gs)]
            # parameters of a shared head under DistributedDataParallel (gradients averaged over ranks)
            head = torch.nn.parallel.DistributedDataParallel(_head())
            total = _head_loss(head, x[sl], labels[sl], eps_v[sl], eps_t[sl], ctx, metric, loss, backend)
            total.backward()
            results[(backend, metric, loss)] = {
                "values": {k: v.detach() for k, v in terms.items()},
                "grads": grads,
                "total": total.detach(),
                "head_grads": [p.grad.clone() for p in head.module.parameters()],
            }
        # unequal local batches (rank 1 one pair short): a named error on every rank, no hang
        short = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL - rank)
        try:
            dcl_loss(mu_v[short], lv_v[short], mu_t[short], lv_t[short], labels[short], ctx=ctx)
            results["unequal"] = "no error"
        except UnequalBatchError as e:
            results["unequal"] = str(e)
        # labels=None: global diagonal positives (this crashed in gather_labels)
        results["no_labels"] = [cosine_contrast_loss(mu_v[sl], mu_t[sl], None, scale=4.0, backend=b, ctx=ctx).detach()
                                for b in BACKENDS]
        if "cpu" in BACKENDS:
            results["pairs"] = _count_pairs(ctx, mu_v, lv_v, mu_t, lv_t, labels, rank)
        results["point_gathers"] = _count_point_gathers(ctx, mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, rank)
        results["same_backend"] = check_same_backend("cpu" if "cpu" in BACKENDS else "reference", torch.device("cpu"), ctx)
        try:  # rank 0 the reference, rank 1 a fused backend where built: a named error on every rank
            check_same_backend("reference" if rank == 0 else BACKENDS[-1], torch.device("cpu"), ctx)
            results["mismatch"] = "no error"
        except BackendMismatchError as e:
            results["mismatch"] = str(e)
        results["size_exchanges"] = _count_size_exchanges(ctx, mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, rank)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single(metric, loss, backend="reference"):
    mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, x = _data()
    leaves = [t.clone().requires_grad_() for t in (mu_v, lv_v, mu_t, lv_t)]
    terms = _losses(*leaves, labels, eps_v, eps_t, DistContext(), metric, loss, backend)
    grads = {}
    for name, value in terms.items():
        gs = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, gs)]
    head = _head()
    total = _head_loss(head, x, labels, eps_v, eps_t, DistContext(), metric, loss, backend)
    total.backward()
    return terms, grads, [p.grad for p in head.parameters()], total.detach()


@pytest.mark.parametrize("metric,loss", CASES)
def test_single_process_path_is_the_library_loss(metric, loss):
    """World size 1 gives exactly uca_kernels' own DCL and PCL on the batch."""
    mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, _ = _data()
    terms, _, _, _ = _single(metric, loss)
    bias = _bias(loss)
    ref = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, metric=metric, loss=loss, scale=0.7,
                                        bias=bias, backend="reference")
    torch.testing.assert_close(terms["dcl"], ref, rtol=1e-12, atol=1e-12)
    p = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, num_samples=K, eps_v=eps_v, eps_t=eps_t, scale=5.0,
                               loss=loss, bias=bias, backend="reference")
    for k in ("inter", "intra_image", "intra_text"):
        torch.testing.assert_close(terms[f"pcl_{k}"], p[k], rtol=1e-12, atol=1e-12)
    pe = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, num_samples=K, eps_v=eps_v, eps_t=eps_t,
                                similarity="euclidean", scale=0.5, loss=loss, bias=bias, backend="reference")
    for k in ("inter", "intra_image", "intra_text"):
        torch.testing.assert_close(terms[f"pcl_euclid_{k}"], pe[k], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric,loss", CASES)
def test_two_processes_equal_single_process(two_process_results, metric, loss, backend):
    """Each backend's two-process run against the single-process float64 reference."""
    terms, grads, head_grads, head_total = _single(metric, loss, "reference")
    ranks = [r[(backend, metric, loss)] for r in two_process_results]
    for name, value in terms.items():
        # the mean over ranks of each rank's value is the global loss
        got = sum(r["values"][name] for r in ranks) / WORLD
        torch.testing.assert_close(got, value.detach(), rtol=1e-10, atol=1e-12, msg=f"{name} value")
        # a rank's input gradient is W times the global gradient of its rows
        for rank, r in enumerate(ranks):
            sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            for i, (g_dist, g_ref) in enumerate(zip(r["grads"][name], grads[name])):
                torch.testing.assert_close(g_dist / WORLD, g_ref[sl], rtol=1e-9, atol=1e-12,
                                           msg=f"{name} grad of input {i} on rank {rank}")
    # DDP-averaged parameter gradients equal the single-process gradients
    for rank, r in enumerate(ranks):
        for g_dist, g_ref in zip(r["head_grads"], head_grads):
            torch.testing.assert_close(g_dist, g_ref, rtol=1e-9, atol=1e-12, msg=f"head grad on rank {rank}")
    total = sum(r["total"] for r in ranks) / WORLD
    torch.testing.assert_close(total, head_total, rtol=1e-10, atol=1e-12)


def test_no_labels_means_global_diagonal_positives(two_process_results):
    mu_v, _, mu_t, _, _, _, _, _ = _data()
    want = cosine_contrast_loss(mu_v, mu_t, None, scale=4.0, backend="reference")
    for i, backend in enumerate(BACKENDS):
        got = sum(r["no_labels"][i] for r in two_process_results) / WORLD
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=backend)


def test_unequal_local_batches_are_a_named_error_on_every_rank(two_process_results):
    for r in two_process_results:
        assert "local batch sizes differ across ranks: [4, 3]" in r["unequal"]


def test_equal_batches_skip_the_size_exchange(two_process_results):
    """The trainer's ctx (equal_batches: its sampler makes every local batch the same size) gathers
    without exchanging sizes first; the terms are the same numbers."""
    for res in two_process_results:
        (checked, values), (trusted, values_trusted) = res["size_exchanges"][False], res["size_exchanges"][True]
        assert checked == 4 and trusted == 0  # one per loss function (DCL, 2 x PCL, baseline), then none
        assert values.keys() == values_trusted.keys()
        for k in values:
            assert torch.equal(values[k], values_trusted[k]), k


def test_point_contrast_gathers_each_modality_once(two_process_results):
    """pcl_loss with intra terms: z_v and z_t are all-gathered once each and shared by the inter and
    intra terms (4 gathers before), and so their backward all-reduces once each (only z_v needs a
    gradient here: z_t is built from tensors that do not require one). The softmax inter term adds
    one all-gather of column statistics and, in the backward, one all-reduce of the column losses'
    upstream gradients (contrast_row_share)."""
    for res in two_process_results:
        assert res["point_gathers"] == {"sdm": (2, 1, 2), "sigmoid": (2, 0, 1)}


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the fused cpu backend")
def test_cross_modal_terms_compute_each_pair_once(two_process_results):
    """Every loss of a cross-modal term covers b × B logit pairs per rank (each global pair once
    across the group): the softmax losses through contrast_row_share, sigmoid by its rows alone.
    Before, the softmax losses made a second call (global rows × local columns): 2 b × B."""
    for res in two_process_results:
        assert res["pairs"] == {loss: B_LOCAL * B_LOCAL * WORLD for loss in ("sdm", "infonce", "sigmoid")}


def test_ranks_must_resolve_the_same_backend(two_process_results):
    """The trainer checks once that every rank resolved the same contrast backend (a fused one and the
    reference run different collectives in the softmax terms)."""
    for res in two_process_results:
        assert res["same_backend"] == ("cpu" if "cpu" in BACKENDS else "reference")
        if "cpu" in BACKENDS:
            assert "resolved different contrast backends" in res["mismatch"] and "['reference', 'cpu']" in res["mismatch"]
