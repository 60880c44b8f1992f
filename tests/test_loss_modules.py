"""The loss modules on one process: each equals its own float64 materialised formula (values and
gradients, module parameters included) and, where open_clip is installed, open_clip's loss; function
and module share defaults; fixed scales and biases are buffers; everything compiles with
``fullgraph=True``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losses_formula as ref
import uca_kernels as uk

BACKENDS = ["reference"] + (["cpu"] if uk._ext.has_op("contrast_forward") else [])
B, D, K = 6, 5, 3
LABELS = torch.tensor([0, 1, 0, 2, 1, 3])  # repeated identities, one unique


def _features(seed=0, n=B, d=D):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(img + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return img, txt


def _gaussians(seed=1):
    g = torch.Generator().manual_seed(seed)
    mu_v = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.5
    lv_v = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.5
    mu_t = mu_v + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    lv_t = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.3 - 1.5
    eps_v = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    eps_t = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    return [mu_v, lv_v, mu_t, lv_t], eps_v, eps_t


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def _close(got, want, tol=1e-10):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


# -- drop-ins for open_clip --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", [None, LABELS], ids=["diagonal", "identities"])
@pytest.mark.parametrize("loss", ["infonce", "sdm"])
def test_clip_loss_is_its_formula(backend, labels, loss):
    img, txt = [t.requires_grad_() for t in _features()]
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    got = uk.ClipLoss(loss=loss, backend=backend)(img, txt, scale, labels=labels)
    want = ref.clip_loss(img, txt, scale, labels, loss)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    _close(_grads(got, (img, txt, scale)), _grads(want, (img, txt, scale)))
    assert uk.ClipLoss(backend=backend)(img, txt, scale, True)["contrastive_loss"].shape == ()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", [None, LABELS], ids=["diagonal", "identities"])
def test_siglip_loss_is_its_formula(backend, labels):
    img, txt = [t.requires_grad_() for t in _features(2)]
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    got = uk.SigLipLoss(backend=backend)(img, txt, scale, bias, labels=labels)
    want = ref.siglip_loss(img, txt, scale, bias, labels)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    _close(_grads(got, (img, txt, scale, bias)), _grads(want, (img, txt, scale, bias)))
    # logit_bias None is bias 0
    torch.testing.assert_close(uk.SigLipLoss(backend=backend)(img, txt, 3.0), ref.siglip_loss(img, txt, 3.0, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drop_ins_equal_open_clip(backend, dtype):
    """Same call, same value and gradients as open_clip's ClipLoss and SigLipLoss."""
    oc = pytest.importorskip("open_clip.loss")
    img0, txt0 = (t.to(dtype) for t in _features(3, n=12, d=8))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for ours, theirs, extra in ((uk.ClipLoss(backend=backend), oc.ClipLoss(), (14.3,)),
                                (uk.SigLipLoss(backend=backend), oc.SigLipLoss(), (10.0, -10.0))):
        results = []
        for fn in (ours, theirs):
            img, txt = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
            params = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in extra]
            value = fn(img, txt, *params)
            results.append((value, *_grads(value, (img, txt, *params))))
        _close(results[0], results[1], tol)


# -- the probabilistic losses --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["w2", "csd"])
@pytest.mark.parametrize("loss", ["sdm", "infonce", "sigmoid"])
def test_distribution_contrast_module_is_its_formula(backend, metric, loss):
    g4, _, _ = _gaussians()
    g4 = [t.requires_grad_() for t in g4]
    mod = uk.DistributionContrastLoss(metric, loss, scale=0.8, learn_scale=True, bias=-0.5, learn_bias=True,
                                      backend=backend).double()
    got = mod(*g4, LABELS)
    want = ref.dcl(*g4, LABELS, metric, loss, mod.log_scale.exp(), mod.bias)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    params = (*g4, mod.log_scale, mod.bias)
    _close(_grads(got, params), _grads(want, params), 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
@pytest.mark.parametrize("loss", ["sdm", "infonce", "sigmoid"])
def test_point_contrast_module_is_its_formula(backend, similarity, loss):
    g4, eps_v, eps_t = _gaussians(4)
    g4 = [t.requires_grad_() for t in g4]
    mod = uk.PointContrastLoss(K, similarity, loss=loss, scale=2.0, learn_scale=True, bias=-1.0, learn_bias=True,
                               backend=backend).double()
    got = mod(*g4, LABELS, eps_v=eps_v, eps_t=eps_t)
    want = ref.pcl(*g4, LABELS, eps_v, eps_t, similarity, loss, mod.log_scale.exp(), mod.bias)
    params = (*g4, mod.log_scale, mod.bias)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-10, msg=name)
    total = sum(want.values())
    torch.testing.assert_close(got["total"], total, rtol=1e-10, atol=1e-10)
    _close(_grads(got["total"], params), _grads(total, params), 1e-8)


def test_prior_kl_module_is_its_formula():
    (mu, lv, _, _), _, _ = _gaussians(5)
    mu, lv = mu.requires_grad_(), lv.requires_grad_()
    mod = uk.PriorKLLoss()
    got, want = mod(mu, lv), ref.prior(mu, lv)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    _close(_grads(got, (mu, lv)), _grads(want, (mu, lv)))
    assert repr(mod) == "PriorKLLoss(reduction='mean')"


@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_function_and_module_share_defaults(loss, similarity):
    """Without a scale or bias, the function and the module give the same loss (the function used
    scale 50 / bias 0 for a sigmoid PCL where the module used 10 / −10; DCL 1 against 5)."""
    g4, eps_v, eps_t = _gaussians(6)
    f = uk.point_contrast_loss(*g4, LABELS, num_samples=K, eps_v=eps_v, eps_t=eps_t, similarity=similarity,
                               loss=loss, backend="reference")
    m = uk.PointContrastLoss(K, similarity, loss=loss, backend="reference").double()(*g4, LABELS, eps_v=eps_v,
                                                                                      eps_t=eps_t)
    for name in f:
        torch.testing.assert_close(f[name], m[name], rtol=1e-6, atol=1e-6, msg=name)  # (the module's
    f = uk.distribution_contrast_loss(*g4, LABELS, loss=loss, backend="reference")    # log scale is float32)
    m = uk.DistributionContrastLoss(loss=loss, backend="reference").double()(*g4, LABELS)
    torch.testing.assert_close(f, m, rtol=1e-6, atol=1e-6)
    if loss == "sigmoid":  # SigLIP's start: 10·cos − 10 on points; −5·d on distances (d ≈ 2 − 2 cos)
        assert uk.losses.pcl_defaults("sigmoid", "cosine") == (10.0, -10.0)
        assert uk.losses.dcl_defaults("sigmoid") == (5.0, 0.0)


def test_fixed_scale_and_bias_are_buffers_and_modules_say_their_settings():
    fixed = uk.PointContrastLoss(2, loss="sigmoid")
    assert dict(fixed.named_buffers()).keys() == {"log_scale", "bias"} and not list(fixed.parameters())
    assert fixed.state_dict()["bias"].item() == -10.0
    assert fixed.double().bias.dtype == torch.float64  # moved with the module
    learned = uk.DistributionContrastLoss("csd", "sigmoid", learn_scale=True, learn_bias=True, max_scale=100.0)
    assert {n for n, _ in learned.named_parameters()} == {"log_scale", "bias"}
    assert repr(fixed) == ("PointContrastLoss(num_samples=2, similarity='cosine', loss='sigmoid', intra=True, "
                           "scale=10, bias=-10)")
    assert repr(learned) == ("DistributionContrastLoss(metric='csd', loss='sigmoid', reduction='mean', scale=5, "
                             "bias=0, learn=log_scale+bias, max_scale=100)")
    assert repr(uk.ClipLoss(loss="sdm", rank=0, world_size=1)) == "ClipLoss(loss='sdm', rank=0, world_size=1)"
    with torch.no_grad():
        learned.log_scale.fill_(10.0)
    assert learned.scale.item() == pytest.approx(100.0)  # clamped at max_scale


def test_module_options_are_keyword_only_and_checked():
    with pytest.raises(TypeError):
        uk.DistributionContrastLoss("w2", "sdm", 2.0)  # scale is keyword-only
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        uk.PointContrastLoss(scale=0.0)
    with pytest.raises(ValueError, match="bias must be a finite number"):
        uk.PointContrastLoss(bias=float("nan"))
    with pytest.raises(ValueError, match="give both rank and world_size"):
        uk.ClipLoss(rank=1)(*_features(), 1.0)
    with pytest.raises(ValueError, match="world_size=2 needs an initialised process group"):
        uk.SigLipLoss(rank=0, world_size=2)(*_features(), 1.0)
    with pytest.raises(ValueError, match="use_horovod"):
        uk.ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match=r"text_features has 4 rows, expected 3"):
        uk.ClipLoss()(torch.zeros(3, 2), torch.zeros(4, 2), 1.0)


def test_contrast_takes_no_row_or_column_term():
    """``contrast(A, B)``: r and c default to zeros (a plain dot product, as CLIP's logits)."""
    img, txt = _features(7)
    got = uk.contrast(img, txt, scale=3.0, loss="infonce", backend="reference", reduction="mean")
    zeros = torch.zeros(B, dtype=torch.float64)
    want = uk.contrast(img, txt, zeros, zeros, 3.0, loss="infonce", backend="reference", reduction="mean")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # reduction="mean" is the sum of the two directions' means: twice open_clip's ClipLoss
    torch.testing.assert_close(got, 2 * ref.clip_loss(img, txt, 3.0), rtol=1e-12, atol=1e-12)
    rows, cols = uk.contrast(img, txt, scale=3.0, loss="infonce", backend="reference")
    torch.testing.assert_close(uk.reduce_losses(rows, cols, "mean", "infonce"), got)


# -- torch.compile -----------------------------------------------------------------------------------


def test_modules_compile_fullgraph():
    """Every module compiles with fullgraph=True and matches eager; PCL with noise drawn from a
    torch.Generator outside the graph (``noise``), and a clear error when the generator is passed in."""
    torch._dynamo.reset()
    g4, _, _ = _gaussians(8)
    img, txt = _features(8)
    pcl = uk.PointContrastLoss(K, loss="sigmoid", backend="reference").double()
    eps_v, eps_t = pcl.noise(g4[0], g4[2], torch.Generator().manual_seed(0))
    cases = [
        (uk.ClipLoss(backend="reference"), (img, txt, torch.tensor(5.0, dtype=torch.float64)), {"labels": LABELS}),
        (uk.SigLipLoss(backend="reference"), (img, txt, torch.tensor(5.0, dtype=torch.float64),
                                              torch.tensor(-2.0, dtype=torch.float64)), {}),
        (uk.DistributionContrastLoss("w2", "sdm", backend="reference").double(), (*g4, LABELS), {}),
        (pcl, (*g4, LABELS), {"eps_v": eps_v, "eps_t": eps_t}),
        (uk.PriorKLLoss(), g4[:2], {}),
    ]
    for mod, args, kwargs in cases:
        want = mod(*args, **kwargs)
        got = torch.compile(mod, fullgraph=True, backend="aot_eager")(*args, **kwargs)
        if isinstance(want, dict):
            want, got = want["total"], got["total"]
        torch.testing.assert_close(got, want, msg=type(mod).__name__)
    compiled = torch.compile(pcl, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"a torch.Generator cannot be traced by torch.compile: draw the noise outside"):
        compiled(*g4, LABELS, generator=torch.Generator().manual_seed(0))
