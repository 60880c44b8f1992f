"""Every loss module under two gloo processes equals its float64 formula on the global batch.

torch.multiprocessing.spawn, file:// rendezvous in tmp_path, float64, the ``reference`` backend and
the fused ``cpu`` one where built. Each rank passes its local half of the batch. Checked: the value
on every rank is the global loss; each rank's input gradients are world_size × the global
gradients of its rows; the gradients of replicated parameters (scale, bias), averaged over ranks as
DistributedDataParallel does, are the global ones. With ``labels=None`` (global diagonal positives:
rank k's pair i is global pair k·b + i) and with identities repeated within and across ranks.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import losses_formula as ref
import uca_kernels as uk

WORLD, B_LOCAL, D, K = 2, 4, 5, 2
B = WORLD * B_LOCAL
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 0, 4])  # identity 0 on both ranks, 1 across them
BACKENDS = ["reference"] + (["cpu"] if uk._ext.has_op("contrast_forward") else [])
# each case runs with diagonal positives (labels=None) and with identities
CASES = ["clip", "clip_sdm", "siglip", "dcl_w2_sdm", "dcl_csd_sigmoid", "pcl_cosine_sdm", "pcl_cosine_sigmoid",
         "pcl_euclidean_infonce", "prior"]


def _data():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(img + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    mu_v = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.5
    lv_v = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.5
    mu_t = mu_v + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    lv_t = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.5
    eps_v = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    eps_t = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    return {"img": img, "txt": txt, "g4": [mu_v, lv_v, mu_t, lv_t], "eps": (eps_v, eps_t)}


def _module(case, backend, **dist_kw):
    """(module or None, scale, bias): scale and bias are replicated leaf tensors the test differentiates."""
    if case.startswith("clip"):
        return uk.ClipLoss(loss="sdm" if case == "clip_sdm" else "infonce", backend=backend, **dist_kw)
    if case == "siglip":
        return uk.SigLipLoss(backend=backend, **dist_kw)
    if case.startswith("dcl"):
        _, metric, loss = case.split("_")
        return uk.DistributionContrastLoss(metric, loss, scale=0.8, learn_scale=True, bias=-0.5, learn_bias=True,
                                           backend=backend, **dist_kw).double()
    if case.startswith("pcl"):
        _, similarity, loss = case.split("_")
        return uk.PointContrastLoss(K, similarity, loss=loss, scale=3.0, learn_scale=True, bias=-1.0,
                                    learn_bias=True, backend=backend, **dist_kw).double()
    return uk.PriorKLLoss(**dist_kw)


def _run(case, backend, data, sl, labels, **dist_kw):
    """(value, input grads, parameter grads) of one module call on the rows ``sl``."""
    mod = _module(case, backend, **dist_kw)
    lab = None if labels is None else labels[sl]
    if case.startswith(("clip", "siglip")):
        inputs = [data["img"][sl].clone().requires_grad_(), data["txt"][sl].clone().requires_grad_()]
        params = [torch.tensor(6.0, dtype=torch.float64, requires_grad=True)]
        if case == "siglip":
            params.append(torch.tensor(-3.0, dtype=torch.float64, requires_grad=True))
        value = mod(*inputs, *params, labels=lab)
    else:
        inputs = [t[sl].clone().requires_grad_() for t in data["g4"]]
        params = list(mod.parameters())
        if case.startswith("dcl"):
            value = mod(*inputs, lab)
        elif case.startswith("pcl"):
            value = mod(*inputs, lab, eps_v=data["eps"][0][sl], eps_t=data["eps"][1][sl])["total"]
        else:
            value = mod(*inputs[:2])
    grads = torch.autograd.grad(value, inputs + params, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs + params, grads)]
    return value.detach(), grads[:len(inputs)], grads[len(inputs):]


def _formula(case, data, labels):
    """The same quantities from the float64 formula on the global batch, one process."""
    if case.startswith(("clip", "siglip")):
        inputs = [data["img"].clone().requires_grad_(), data["txt"].clone().requires_grad_()]
        params = [torch.tensor(6.0, dtype=torch.float64, requires_grad=True)]
        if case == "siglip":
            params.append(torch.tensor(-3.0, dtype=torch.float64, requires_grad=True))
            value = ref.siglip_loss(*inputs, *params, labels)
        else:
            value = ref.clip_loss(*inputs, params[0], labels, "sdm" if case == "clip_sdm" else "infonce")
    else:
        inputs = [t.clone().requires_grad_() for t in data["g4"]]
        mod = _module(case, "reference")
        params = list(mod.parameters())
        if case.startswith("dcl"):
            _, metric, loss = case.split("_")
            value = ref.dcl(*inputs, labels, metric, loss, mod.log_scale.exp(), mod.bias)
        elif case.startswith("pcl"):
            _, similarity, loss = case.split("_")
            value = sum(ref.pcl(*inputs, labels, *data["eps"], similarity, loss, mod.log_scale.exp(),
                                mod.bias).values())
        else:
            value = ref.prior(*inputs[:2])
    grads = torch.autograd.grad(value, inputs + params, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs + params, grads)]
    return value.detach(), grads[:len(inputs)], grads[len(inputs):]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = _data()
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for backend in BACKENDS:
            for case in CASES:
                for name, labels in (("diagonal", None), ("identities", LABELS)):
                    results[(backend, case, name)] = _run(case, backend, data, sl, labels)
        # explicit rank / world_size (open_clip's arguments) give the same; world_size=1 this rank alone
        results["explicit"] = _run("clip", "reference", data, sl, None, rank=rank, world_size=WORLD)
        results["alone"] = _run("clip", "reference", data, sl, None, rank=0, world_size=1)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_losses")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _check(per_rank, want, what):
    value, grads, params = want
    for rank, (v, g, p) in enumerate(per_rank):
        torch.testing.assert_close(v, value, rtol=1e-10, atol=1e-12, msg=f"{what}: value on rank {rank}")
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        for i, (gd, gr) in enumerate(zip(g, grads)):
            torch.testing.assert_close(gd / WORLD, gr[sl], rtol=1e-9, atol=1e-12,
                                       msg=f"{what}: gradient of input {i} on rank {rank}")
    for i, gr in enumerate(params):  # DistributedDataParallel's average of the replicated parameters' gradients
        avg = sum(p[i] for _, _, p in per_rank) / WORLD
        torch.testing.assert_close(avg, gr, rtol=1e-9, atol=1e-12, msg=f"{what}: gradient of parameter {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("labels", ["diagonal", "identities"])
def test_two_processes_equal_the_global_formula(ranks, backend, case, labels):
    want = _formula(case, _data(), None if labels == "diagonal" else LABELS)
    _check([r[(backend, case, labels)] for r in ranks], want, f"{case} ({backend}, {labels})")


def test_explicit_rank_and_world_size(ranks):
    data = _data()
    _check([r["explicit"] for r in ranks], _formula("clip", data, None), "ClipLoss(rank, world_size)")
    for rank, r in enumerate(ranks):  # world_size=1: this rank's half as its own batch
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        local = ref.clip_loss(data["img"][sl], data["txt"][sl], 6.0)
        torch.testing.assert_close(r["alone"][0], local, rtol=1e-12, atol=1e-12)
