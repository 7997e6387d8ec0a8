"""Fused output-gradient ops against a float64 PyTorch reference.

Three implementations are checked: the C++ CPU kernel (through the public API), the Triton
kernels launched directly on CPU tensors under ``TRITON_INTERPRET=1`` (small shapes), and the
public API on CUDA (Triton compiled for the GPU) when one is present.
"""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers.asserts import assert_close
from helpers.triton_env import INTERPRETER_WORKS, interpreted

import is_kernels
from is_kernels.ops import output_grad_triton

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REDUCTIONS = ["mean", "sum", "none"]
# Loss and gradient come back in the input dtype: their tolerance is its rounding.
OUT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def ce_reference(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """float64 loss, score and grad of the reduced loss, computed by plain PyTorch."""
    z = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(z, target, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), z) if loss.numel() else (torch.zeros_like(z),)
    C = z.shape[1]
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), C).double()
    t = (1 - label_smoothing) * onehot + label_smoothing / C
    # 1 - p_y as the sum of the other probabilities: exact enough for p_y -> 1.
    p = z.detach().softmax(1)
    lse = torch.logsumexp(z.detach(), 1, keepdim=True)
    p_other = torch.where(onehot.bool(), 0.0, torch.exp(z.detach() - lse))
    d = p - t
    d_y = (label_smoothing - label_smoothing / C) - p_other.sum(1)
    d = torch.where(onehot.bool(), d_y[:, None], d)
    score = torch.where(valid, d.norm(dim=1), 0.0)
    return loss.detach(), score, grad


def mse_reference(pred, target, reduction="mean"):
    p = pred.detach().double().requires_grad_()
    y = target.double()
    D = p.shape[1] if p.dim() == 2 else 1
    if reduction == "none":
        loss = ((p - y) ** 2).reshape(p.shape[0], D).mean(1)
    else:
        loss = F.mse_loss(p, y, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), p) if loss.numel() else (torch.zeros_like(p),)
    score = 2.0 / D * (p - y).reshape(p.shape[0], D).norm(dim=1)
    return loss.detach(), score.detach(), grad


def run_public_ce(logits, target, **kw):
    z = logits.detach().clone().requires_grad_()
    loss, score = is_kernels.cross_entropy_with_score(z, target, **kw)
    grad = torch.autograd.grad(loss.sum(), z)[0] if loss.numel() else torch.zeros_like(z)
    return loss, score, grad


def run_triton_ce(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  max_tile_c=output_grad_triton.MAX_TILE_C):
    # The kernel's gradient is already that of loss.sum() (scaled for "mean").
    return output_grad_triton.cross_entropy_with_score(
        logits, target, ignore_index, label_smoothing, reduction, True, max_tile_c=max_tile_c)


def random_case(N, C, dtype, device="cpu", ignore_frac=0.2, ignore_index=-100, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, C, generator=g) * 4).to(dtype).to(device)
    target = torch.randint(0, C, (N,), generator=g)
    target[torch.rand(N, generator=g) < ignore_frac] = ignore_index
    return logits, target.to(device)


def check_ce(run, logits, target, dtype, reference=None, **kw):
    """``run``'s loss, score and gradient against ``reference`` (``ce_reference``)."""
    loss, score, grad = run(logits, target, **kw)
    ref_loss, ref_score, ref_grad = (reference or ce_reference)(logits, target, **kw)
    assert score.dtype == torch.float32 and loss.dtype == logits.dtype
    assert_close(loss, ref_loss, OUT_TOL[dtype], "loss")
    assert_close(score, ref_score, 2e-6 if dtype != torch.float64 else 1e-7, "score")
    assert_close(grad, ref_grad, OUT_TOL[dtype], "grad")


# ---- C++ CPU kernel through the public API -------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C", [(1, 1), (7, 2), (33, 10), (64, 1000), (5, 4099), (3, 40000)])
def test_ce_cpu_matches_reference(N, C, dtype, reduction):
    logits, target = random_case(N, C, dtype, seed=N * C)
    check_ce(run_public_ce, logits, target, dtype, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [3, 4, 5, 8, 9, 15, 16, 17, 31])
def test_ce_cpu_every_target_lane(C, dtype):
    """The CPU passes mask the target's lane and the row's partial last vector: every target
    position within and across vectors (4 or 8 lanes), rows shorter and longer than one."""
    g = torch.Generator().manual_seed(C)
    logits = (torch.randn(3 * C, C, generator=g) * 4).to(dtype)
    target = torch.arange(3 * C) % C
    for ls in (0.0, 0.1):
        check_ce(run_public_ce, logits, target, dtype, label_smoothing=ls, reduction="sum")


def test_ce_masked_logits_get_zero_probability():
    """-inf logits (masked classes) have probability 0: exactly 0 gradient, finite loss."""
    logits, target = random_case(40, 21, torch.float32, ignore_frac=0.0)
    mask = torch.rand(40, 21, generator=torch.Generator().manual_seed(2)) < 0.4
    mask[torch.arange(40), target] = False
    logits[mask] = float("-inf")
    loss, score, grad = run_public_ce(logits, target, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(score).all()
    assert (grad[mask] == 0).all()
    ref_loss, ref_score, ref_grad = ce_reference(logits, target, reduction="none")
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(score, ref_score, 2e-6, "score")
    assert_close(grad, ref_grad.nan_to_num(0.0), 1e-5, "grad")


@pytest.mark.parametrize("label_smoothing", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ce_cpu_label_smoothing_and_ignore_index(label_smoothing, ignore_index):
    logits, target = random_case(50, 17, torch.float32, ignore_index=ignore_index)
    for reduction in REDUCTIONS:
        check_ce(run_public_ce, logits, target, torch.float32, ignore_index=ignore_index,
                 label_smoothing=label_smoothing, reduction=reduction)


def test_ce_non_contiguous_logits():
    base, target = random_case(40, 30, torch.float32)
    for logits in (base[:, ::2], base.t().contiguous().t(), base[::3]):
        tgt = target[: logits.shape[0]] % logits.shape[1]
        check_ce(run_public_ce, logits, tgt, torch.float32, reduction="sum")


def test_ce_empty_and_all_ignored():
    for reduction in REDUCTIONS:
        logits = torch.randn(0, 5, requires_grad=True)
        loss, score = is_kernels.cross_entropy_with_score(logits, torch.zeros(0, dtype=torch.long),
                                                          reduction=reduction)
        ref = F.cross_entropy(logits, torch.zeros(0, dtype=torch.long), reduction=reduction)
        assert score.shape == (0,)
        assert loss.shape == ref.shape
        assert torch.equal(loss.isnan(), ref.isnan())
    logits, _ = random_case(6, 4, torch.float32)
    target = torch.full((6,), -100)
    loss, score = is_kernels.cross_entropy_with_score(logits.requires_grad_(), target)
    assert math.isnan(loss.item()) and math.isnan(F.cross_entropy(logits, target).item())
    assert torch.equal(score, torch.zeros(6))
    loss, _ = is_kernels.cross_entropy_with_score(logits, target, reduction="sum")
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_extreme_logits():
    logits, target = random_case(20, 50, torch.float32)
    logits = torch.where(torch.rand(20, 50) < 0.5, 1e4, -1e4) * torch.rand(20, 50)
    for reduction in REDUCTIONS:
        check_ce(run_public_ce, logits, target, torch.float32, reduction=reduction)
        loss, score, grad = run_public_ce(logits, target, reduction=reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(score).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ce_score_keeps_relative_precision_of_learned_rows(dtype):
    """p_y -> 1: 1 - p_y is far below float32 epsilon, the score must still be exact."""
    g = torch.Generator().manual_seed(1)
    N, C = 64, 100
    logits = torch.randn(N, C, generator=g)
    target = torch.randint(0, C, (N,), generator=g)
    margin = torch.linspace(5, 60, N)
    logits[torch.arange(N), target] = margin
    logits = logits.to(dtype)
    _, ref_score, _ = ce_reference(logits, target, reduction="none")
    with torch.no_grad():
        _, score = is_kernels.cross_entropy_with_score(logits, target, reduction="none")
    norm = is_kernels.output_grad_norm(logits, target)
    assert (ref_score > 0).all() and ref_score.min() < 1e-20
    for s in (score, norm):
        rel = ((s.double() - ref_score) / ref_score).abs().max().item()
        assert rel < 1e-5, rel
    # -log p_y = log1p(sum_{j!=y} exp(z_j - z_y)): float64 F.cross_entropy rounds it to 0.
    loss, _ = is_kernels.cross_entropy_with_score(logits, target, reduction="none")
    z = logits.double()
    rest = torch.exp(z - z.gather(1, target[:, None])).scatter(1, target[:, None], 0.0)
    ref_loss = torch.log1p(rest.sum(1))
    assert ((loss.double() - ref_loss) / ref_loss).abs().max() < max(1e-5, OUT_TOL[dtype])


def test_ce_nan_and_inf_stay_in_their_row():
    logits, target = random_case(8, 6, torch.float32, ignore_frac=0.0)
    logits[2, 1] = float("nan")
    logits[5, 0] = float("inf")
    loss, score = is_kernels.cross_entropy_with_score(logits, target, reduction="none")
    bad = torch.zeros(8, dtype=torch.bool)
    bad[[2, 5]] = True
    assert loss[bad].isnan().all() and score[bad].isnan().all()
    assert torch.isfinite(loss[~bad]).all() and torch.isfinite(score[~bad]).all()
    ref_loss, ref_score, _ = ce_reference(logits[~bad], target[~bad], reduction="none")
    assert_close(loss[~bad], ref_loss, 1e-5, "loss")
    assert_close(score[~bad], ref_score, 2e-6, "score")


INF = float("inf")
INFINITE_ROWS = [[INF, 0.0, 0.0], [0.0, INF, 0.0], [-INF, 0.0, 0.0], [0.0, -INF, 0.0],
                 [INF, INF, 0.0], [-INF, -INF, 1.0], [3.0, 1.0, -2.0]]


def infinite_logit_impls():
    impls = {"cpp": lambda z, t, ls: run_public_ce(z, t, label_smoothing=ls, reduction="none")}
    if INTERPRETER_WORKS:
        for tile in (output_grad_triton.MAX_TILE_C, 2):  # the tile and the loop kernel
            impls[f"triton-{tile}"] = partial(_triton_none, max_tile_c=tile)
    return impls


def _triton_none(z, t, ls, max_tile_c):
    return run_triton_ce(z, t, label_smoothing=ls, reduction="none", max_tile_c=max_tile_c)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("impl", list(infinite_logit_impls()))
def test_ce_infinite_logits_follow_pytorch(impl, label_smoothing):
    """+inf at the target (p_y = inf/inf) or elsewhere gives NaN loss, score and gradient;
    -inf logits are probabilities 0: finite score, loss inf at the target (as PyTorch)."""
    logits = torch.tensor(INFINITE_ROWS)
    target = torch.zeros(len(INFINITE_ROWS), dtype=torch.int64)
    loss, score, grad = infinite_logit_impls()[impl](logits, target, label_smoothing)
    ref_loss, ref_score, ref_grad = ce_reference(logits, target, label_smoothing=label_smoothing,
                                                 reduction="none")
    assert_close(loss, ref_loss, 1e-6, "loss")
    assert_close(score, ref_score, 1e-6, "score")
    assert_close(grad, ref_grad, 1e-6, "grad")
    assert score[:2].isnan().all() and torch.isfinite(score[2:4]).all()


def test_output_grad_norm_matches_reference_and_needs_no_grad():
    logits, target = random_case(30, 12, torch.float32)
    logits.requires_grad_()
    for ls in (0.0, 0.1):
        score = is_kernels.output_grad_norm(logits, target, label_smoothing=ls)
        assert not score.requires_grad
        assert_close(score, ce_reference(logits, target, label_smoothing=ls)[1], 2e-6, "score")


def test_ce_gradcheck():
    logits, target = random_case(6, 5, torch.float64)
    for reduction in REDUCTIONS:
        for ls in (0.0, 0.2):
            assert torch.autograd.gradcheck(
                lambda z: is_kernels.cross_entropy_with_score(
                    z, target, reduction=reduction, label_smoothing=ls)[0],
                (logits.clone().requires_grad_(),))


def test_ce_integer_targets_of_other_dtypes():
    logits, target = random_case(9, 4, torch.float32, ignore_frac=0.0)
    ref = is_kernels.cross_entropy_with_score(logits, target)[0]
    assert torch.equal(is_kernels.cross_entropy_with_score(logits, target.int())[0], ref)


# ---- bad input -----------------------------------------------------------------------------

CE_BAD_INPUTS = [
    ("target\\[3\\] = 7 is out of range", lambda z, t: (z, t.index_fill(0, torch.tensor([3]), 7)), {}),
    ("target\\[0\\] = -1 is out of range", lambda z, t: (z, t.index_fill(0, torch.tensor([0]), -1)), {}),
    ("target must be integer class indices or float", lambda z, t: (z, t.bool()), {}),
    ("target \\(class probabilities\\) must have the shape", lambda z, t: (z, t.float()), {}),
    ("target \\(class probabilities\\) must have the dtype",
     lambda z, t: (z, z.double().softmax(1)), {}),
    ("target must have shape", lambda z, t: (z, t[:-1]), {}),
    ("at least one class", lambda z, t: (z[:, :0], t), {}),
    ("logits must be float", lambda z, t: (z.int(), t), {}),
    ("reduction must be", lambda z, t: (z, t), {"reduction": "avg"}),
    ("label_smoothing must be in", lambda z, t: (z, t), {"label_smoothing": 1.5}),
    ("label_smoothing must be in", lambda z, t: (z, t), {"label_smoothing": -0.1}),
]
# Caught by the public wrappers (the op's schema would reject them less clearly); the
# wrappers take [C] and [N, C, d1, ...] logits too, so there the target's shape is wrong.
CE_BAD_ARGUMENTS = [
    ("target must have shape \\(\\) for \\[C\\] logits", lambda z, t: (z[0], t), {}),
    ("target must have shape \\[N, d1, ...\\] = \\(1, 7\\)", lambda z, t: (z[None], t), {}),
    ("logits must be \\[C\\], \\[N, C\\] or", lambda z, t: (z[0, 0], t), {}),
    ("logits must be a torch.Tensor", lambda z, t: (z.tolist(), t), {}),
    ("target must be a torch.Tensor", lambda z, t: (z, t.tolist()), {}),
    ("label_smoothing must be a float", lambda z, t: (z, t), {"label_smoothing": "0.1"}),
    ("ignore_index must be an int", lambda z, t: (z, t), {"ignore_index": True}),
    ("ignore_index must be an int", lambda z, t: (z, t), {"ignore_index": 1.0}),
]


@pytest.mark.parametrize("match,make,kw", CE_BAD_INPUTS + CE_BAD_ARGUMENTS)
def test_ce_bad_input_raises_naming_the_argument(match, make, kw):
    logits, target = random_case(6, 7, torch.float32, ignore_frac=0.0)
    logits, target = make(logits, target)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        is_kernels.cross_entropy_with_score(logits, target, **kw)
    if "reduction" not in kw:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
            is_kernels.output_grad_norm(logits, target, **kw)


# The op itself takes 2-D logits only (the public wrappers reshape the others).
CE_OP_BAD_SHAPES = [
    ("logits must be 2-D", lambda z, t: (z[0], t), {}),
    ("logits must be 2-D", lambda z, t: (z[None], t), {}),
]


@pytest.mark.parametrize("match,make,kw", CE_BAD_INPUTS[2:] + CE_OP_BAD_SHAPES)
def test_ce_bad_input_raises_in_fake_kernel(match, make, kw):
    """The same checks run at trace time (fake tensors), as under torch.compile."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    logits, target = random_case(6, 7, torch.float32, ignore_frac=0.0)
    logits, target = make(logits, target)
    if target.dtype != torch.int64:
        return  # the public wrapper converts integer targets; floats fail before the op
    with FakeTensorMode() as mode:
        fz, ft = mode.from_tensor(logits), mode.from_tensor(target)
        with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
            torch.ops.is_kernels.cross_entropy_with_score(
                fz, ft, -100, kw.get("label_smoothing", 0.0), kw.get("reduction", "mean"), True)


# ---- MSE ----------------------------------------------------------------------------------

def run_public_mse(pred, target, reduction):
    p = pred.detach().clone().requires_grad_()
    loss, score = is_kernels.mse_with_score(p, target, reduction=reduction)
    grad = torch.autograd.grad(loss.sum(), p)[0] if loss.numel() else torch.zeros_like(p)
    return loss, score, grad


def check_mse(run, pred, target, dtype, reduction):
    loss, score, grad = run(pred, target, reduction)
    ref_loss, ref_score, ref_grad = mse_reference(pred, target, reduction)
    assert loss.dtype == pred.dtype and score.dtype == torch.float32
    assert_close(loss, ref_loss, OUT_TOL[dtype], "loss")
    assert_close(score, ref_score, 2e-6 if dtype != torch.float64 else 1e-7, "score")
    assert_close(grad, ref_grad, OUT_TOL[dtype], "grad")


def mse_case(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(dtype).to(device),
            torch.randn(shape, generator=g).to(dtype).to(device))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(0, 3), (1,), (17,), (9, 1), (33, 7), (5, 3000)])
def test_mse_cpu_matches_reference(shape, dtype, reduction):
    pred, target = mse_case(shape, dtype)
    check_mse(run_public_mse, pred, target, dtype, reduction)


def test_mse_gradient_flows_to_target_and_gradcheck():
    pred, target = mse_case((5, 4), torch.float64)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda p, y: is_kernels.mse_with_score(p, y, reduction=reduction)[0],
            (pred.clone().requires_grad_(), target.clone().requires_grad_()))


@pytest.mark.parametrize("match,make", [
    ("pred must be \\[N\\] or \\[N, D\\]", lambda p, y: (p[None], y[None])),
    ("target must have the shape of pred", lambda p, y: (p, y[:-1])),
    ("target must have the dtype of pred", lambda p, y: (p, y.double())),
    ("pred must be float", lambda p, y: (p.int(), y.int())),
    ("at least one feature \\(D >= 1\\)", lambda p, y: (p[:, :0], y[:, :0])),
    ("target must be a torch.Tensor", lambda p, y: (p, y.tolist())),
])
def test_mse_bad_input(match, make):
    pred, target = make(*mse_case((4, 3), torch.float32))
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        is_kernels.mse_with_score(pred, target)
    with pytest.raises((RuntimeError, ValueError), match="reduction must be"):
        is_kernels.mse_with_score(*mse_case((4, 3), torch.float32), reduction="max")


# ---- custom-op machinery: opcheck, torch.compile ------------------------------------------

def opcheck_cases(device):
    logits, target = random_case(8, 5, torch.float32, device=device)
    pred, y = mse_case((8, 3), torch.float32, device=device)
    for reduction in REDUCTIONS:
        for ls in (0.0, 0.1):
            yield (torch.ops.is_kernels.cross_entropy_with_score.default,
                   (logits.clone().requires_grad_(), target, -100, ls, reduction, True))
        yield (torch.ops.is_kernels.mse_with_score.default,
               (pred.clone().requires_grad_(), y, reduction, True))
    yield (torch.ops.is_kernels.cross_entropy_with_score.default,
           (logits, target, -100, 0.0, "mean", False))
    yield torch.ops.is_kernels.output_grad_norm.default, (logits, target, -100, 0.0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_opcheck(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    model = torch.nn.Linear(12, 7).to(device)

    def step(x, t):
        loss, score = is_kernels.cross_entropy_with_score(model(x), t, reduction="none")
        w = 1.0 / (score + 1.0)
        return (w * loss).mean(), score

    x = torch.randn(16, 12, device=device)
    t = torch.randint(0, 7, (16,), device=device)
    compiled = torch.compile(step, fullgraph=True)
    loss_c, score_c = compiled(x, t)
    loss_c.backward()
    grad_c = model.weight.grad.clone()
    model.weight.grad = None
    loss_e, score_e = step(x, t)
    loss_e.backward()
    assert torch.allclose(loss_c, loss_e) and torch.allclose(score_c, score_e)
    assert torch.allclose(grad_c, model.weight.grad, atol=1e-6)


# ---- Triton kernels on CPU tensors (interpreter) -------------------------------------------

@interpreted
@pytest.mark.parametrize("max_tile_c", [output_grad_triton.MAX_TILE_C, 16])
@pytest.mark.parametrize("N,C,dtype", [(1, 1, torch.float32), (13, 3, torch.float32),
                                       (9, 37, torch.float64), (6, 100, torch.bfloat16)])
def test_triton_ce_interpreted(N, C, dtype, max_tile_c):
    """Both kernels: whole rows in registers, and (max_tile_c=16) the chunked column loop."""
    logits, target = random_case(N, C, dtype, seed=N + C)
    for reduction in REDUCTIONS:
        for ls in (0.0, 0.15):
            check_ce(lambda z, t, **kw: run_triton_ce(z, t, max_tile_c=max_tile_c, **kw),
                     logits, target, dtype, reduction=reduction, label_smoothing=ls)


@interpreted
@pytest.mark.parametrize("max_tile_c", [output_grad_triton.MAX_TILE_C, 16])
def test_triton_ce_interpreted_precision_and_bad_rows(max_tile_c):
    N, C = 6, 40
    logits, target = random_case(N, C, torch.float32, ignore_frac=0.0)
    logits[torch.arange(N), target] = torch.linspace(10, 60, N)
    _, ref_score, _ = ce_reference(logits, target, reduction="none")
    loss, score, _ = output_grad_triton.cross_entropy_with_score(
        logits, target, -100, 0.0, "none", False, max_tile_c=max_tile_c)
    assert ((score.double() - ref_score) / ref_score).abs().max() < 1e-5
    # Out-of-range targets cannot raise inside a GPU kernel: that row becomes NaN, not lost.
    target[1] = C + 3
    target[3] = -100
    loss, score, grad = output_grad_triton.cross_entropy_with_score(
        logits, target, -100, 0.0, "none", True, max_tile_c=max_tile_c)
    assert loss[1].isnan() and score[1].isnan() and grad[1].isnan().all()
    assert loss[3] == 0 and score[3] == 0 and (grad[3] == 0).all()
    keep = torch.tensor([0, 2, 4, 5])
    assert torch.isfinite(loss[keep]).all() and torch.isfinite(grad[keep]).all()


@interpreted
@pytest.mark.parametrize("max_tile_c", [output_grad_triton.MAX_TILE_C, 16])
def test_triton_ce_mean_counts_in_every_program(max_tile_c):
    """"mean" with a gradient: every program counts the non-ignored targets itself (one
    launch). The tile kernel's grid is then capped, so programs take several row blocks;
    a mean over no counted row is NaN with a zero gradient, as F.cross_entropy."""
    from is_kernels.ops.cuda_path import LaunchCounter

    N, C = (300, 3) if max_tile_c > 16 else (23, 40)
    logits, target = random_case(N, C, torch.float32, ignore_frac=0.3, seed=5)
    with LaunchCounter() as c:
        check_ce(lambda z, t, **kw: run_triton_ce(z, t, max_tile_c=max_tile_c, **kw),
                 logits, target, torch.float32, reduction="mean", label_smoothing=0.1)
    assert sum(c.triton.values()) == 1, c.summary()  # the reference adds aten ops
    loss, _, grad = run_triton_ce(logits, torch.full_like(target, -100), max_tile_c=max_tile_c)
    assert loss.isnan() and (grad == 0).all()


def test_loop_programs_fit_rows_in_half_the_l2():
    """At most one program per SM and per row; rows in flight within half the L2."""
    loop_programs = output_grad_triton.loop_programs
    assert loop_programs(16384, 131072 * 2, 132, 50 << 20) == 100  # bf16 rows of 256 KB
    assert loop_programs(16384, 131072 * 4, 132, 50 << 20) == 50
    assert loop_programs(16384, 16384 * 2, 132, 50 << 20) == 132
    assert loop_programs(3, 16384 * 2, 132, 50 << 20) == 3
    assert loop_programs(5, 64 << 20, 132, 50 << 20) == 1


@interpreted
@pytest.mark.parametrize("shape,dtype", [((7,), torch.float32), ((11, 5), torch.float64),
                                         ((3, 1500), torch.float32)])
def test_triton_mse_interpreted(shape, dtype):
    pred, target = mse_case(shape, dtype)
    for reduction in REDUCTIONS:
        check_mse(lambda p, y, red: output_grad_triton.mse_with_score(p, y, red, True),
                  pred, target, dtype, reduction)


# ---- CUDA (Triton compiled for the GPU) ----------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C", [(0, 3), (1, 1), (7, 2), (300, 10), (64, 1000), (5, 4099),
                                 (3, 40000), (2, 262144)])
def test_ce_cuda_matches_reference(N, C, dtype, reduction):
    logits, target = random_case(N, C, dtype, device="cuda", seed=N * C)
    for ls in (0.0, 0.1):
        check_ce(run_public_ce, logits, target.cuda(), dtype, reduction=reduction,
                 label_smoothing=ls)


@requires_cuda
def test_cuda_precision_extremes_and_mse():
    logits, target = random_case(64, 100, torch.float32, ignore_frac=0.0)
    logits[torch.arange(64), target] = torch.linspace(5, 60, 64)
    _, ref_score, _ = ce_reference(logits, target, reduction="none")
    score = is_kernels.output_grad_norm(logits.cuda(), target.cuda()).cpu()
    assert ((score.double() - ref_score) / ref_score).abs().max() < 1e-5
    big = (torch.rand(20, 50) * 2e4 - 1e4).cuda()
    check_ce(run_public_ce, big, torch.randint(0, 50, (20,)).cuda(), torch.float32)
    for shape in [(17,), (33, 7), (5, 3000)]:
        pred, y = mse_case(shape, torch.float32, device="cuda")
        for reduction in REDUCTIONS:
            check_mse(run_public_mse, pred, y, torch.float32, reduction)


def test_backward_twice_with_retain_graph_accumulates():
    logits, target = random_case(12, 9, torch.float32)
    logits.requires_grad_()
    loss, _ = is_kernels.cross_entropy_with_score(logits, target)
    loss.backward(retain_graph=True)
    once = logits.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    assert torch.allclose(logits.grad, 3 * once)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_donates_the_forward_gradient(reduction, weighted):
    """Without retain_graph the backward scales the forward's gradient buffer in place and
    hands it on (no second logits-sized tensor); the values are the reference gradient."""
    logits, target = random_case(33, 17, torch.float32)
    z = logits.clone().requires_grad_()
    loss, _, buffer = torch.ops.is_kernels.cross_entropy_with_score(z, target, -100, 0.0,
                                                                    reduction, True)
    w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    out = (w * loss).sum() if weighted else loss.sum()
    (grad,) = torch.autograd.grad(out, z)
    zd = logits.double().requires_grad_()
    ref = F.cross_entropy(zd, target, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(((w.double() * ref).sum() if weighted else ref.sum()), zd)
    assert grad.data_ptr() == buffer.data_ptr()
    assert_close(grad, ref_grad, OUT_TOL[torch.float32], "grad")


def _grad_buffer(op_name, x, target):
    op = getattr(torch.ops.is_kernels, op_name)
    args = (x, target, -100, 0.0, "sum", True) if op_name == "cross_entropy_with_score" else \
        (x, target, "sum", True)
    return op(*args)[2]


@pytest.mark.parametrize("op_name", ["cross_entropy_with_score", "mse_with_score"])
def test_cpu_gradient_buffer_is_reused_only_once_free(op_name):
    """The CPU ops hand their last gradient buffer out again once nothing references it (no
    fresh pages to fault in per step), and never one that is still held."""
    if op_name == "cross_entropy_with_score":
        x, target = random_case(40, 23, torch.float32)
        reference = lambda x: ce_reference(x, target, reduction="sum")[2]  # noqa: E731
    else:
        x, target = mse_case((40, 23), torch.float32)
        reference = lambda x: mse_reference(x, target, reduction="sum")[2]  # noqa: E731
    held = _grad_buffer(op_name, x, target)
    kept = held.clone()
    second = _grad_buffer(op_name, 2 * x, target)
    view, view_kept = second[:3], second[:3].clone()
    del second
    third = _grad_buffer(op_name, 3 * x, target)  # the last buffer lives on in `view`
    assert third.data_ptr() not in (held.data_ptr(), view.data_ptr())
    address = third.data_ptr()
    del third
    other = torch.empty_like(x)  # malloc would give it a freed buffer: the ops keep theirs
    fourth = _grad_buffer(op_name, 4 * x, target)  # the last buffer, free again
    assert fourth.data_ptr() == address != other.data_ptr()
    assert_close(fourth, reference(4 * x), OUT_TOL[torch.float32], "grad")
    torch.testing.assert_close(held, kept, rtol=0, atol=0)
    torch.testing.assert_close(view, view_kept, rtol=0, atol=0)


def test_backward_with_create_graph_or_retained_graph_does_not_donate():
    logits, target = random_case(10, 6, torch.float32)
    z = logits.clone().requires_grad_()
    loss, _, buffer = torch.ops.is_kernels.cross_entropy_with_score(z, target, -100, 0.0,
                                                                    "mean", True)
    before = buffer.clone()
    for kw in ({"create_graph": True}, {"retain_graph": True}):
        (grad,) = torch.autograd.grad(2 * loss, z, **kw)
        assert grad.data_ptr() != buffer.data_ptr()
        torch.testing.assert_close(grad, 2 * before)
    torch.testing.assert_close(buffer, before)


def test_only_the_loss_carries_a_gradient():
    """Backward through the raw op's gradient output alone gives the logits no gradient
    (the op is not twice differentiable); with the loss in the graph it is the loss's."""
    logits, target = random_case(6, 5, torch.float32)
    logits.requires_grad_()
    loss, _, grad = torch.ops.is_kernels.cross_entropy_with_score(logits, target, -100, 0.0,
                                                                  "sum", True)
    grad.sum().backward(retain_graph=True)
    assert logits.grad is None
    (loss + grad.sum()).backward()
    torch.testing.assert_close(logits.grad, grad.detach())


# ---- F.cross_entropy parity: class probabilities, [C] and [N, C, d1, ...] inputs ----------

def soft_reference(logits, target, label_smoothing=0.0, reduction="mean"):
    """float64 loss, per-sample gradient norm and gradient of the reduced loss, by autograd
    of F.cross_entropy (any shape it takes). The score of sample i is the norm of the
    gradient of its own loss (reduction "none") with respect to its logits."""
    z = logits.detach().double().requires_grad_()
    t = target.double() if target.dtype.is_floating_point else target
    loss = F.cross_entropy(z, t, label_smoothing=label_smoothing, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), z) if loss.numel() else (torch.zeros_like(z),)
    per = F.cross_entropy(z, t, label_smoothing=label_smoothing, reduction="none")
    (per_grad,) = torch.autograd.grad(per.sum(), z) if per.numel() else (torch.zeros_like(z),)
    class_dim = 0 if z.dim() == 1 else 1
    return loss.detach(), per_grad.norm(dim=class_dim), grad


def soft_case(N, C, dtype, seed=0, normalized=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, C, generator=g) * 4).to(dtype)
    q = torch.rand(N, C, generator=g) ** 4
    q = (q / q.sum(1, keepdim=True) if normalized else q * 2).to(dtype)
    return logits, q


def check_parity(logits, target, dtype, impl=run_public_ce, **kw):
    check_ce(impl, logits, target, dtype, reference=soft_reference, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("N,C", [(1, 1), (7, 5), (33, 300), (3, 5000)])
def test_ce_probability_targets_cpu(N, C, dtype, reduction):
    logits, q = soft_case(N, C, dtype, seed=N + C)
    for ls in (0.0, 0.2):
        check_parity(logits, q, dtype, reduction=reduction, label_smoothing=ls)
    # Targets that do not sum to 1 are taken as given, as F.cross_entropy does.
    logits, q = soft_case(N, C, dtype, seed=N + C, normalized=False)
    check_parity(logits, q, dtype, reduction=reduction)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_extra_dims_and_unbatched(soft, reduction):
    """[N, C, d1, d2] logits: one sample per position (loss and score [N, d1, d2] with
    "none"); [C] logits: one sample (0-dim score)."""
    g = torch.Generator().manual_seed(5)
    N, C, d1, d2 = 3, 11, 4, 2
    logits = torch.randn(N, C, d1, d2, generator=g) * 3
    if soft:
        target = torch.rand(N, C, d1, d2, generator=g).softmax(1)
    else:
        target = torch.randint(0, C, (N, d1, d2), generator=g)
        target[0, 1, 1] = target[2, 3, 0] = -100
    for ls in (0.0, 0.1):
        check_parity(logits, target, torch.float32, reduction=reduction, label_smoothing=ls)
        norm = is_kernels.output_grad_norm(logits, target, label_smoothing=ls)
        assert_close(norm, soft_reference(logits, target, ls)[1], 2e-6, "output_grad_norm")
    one = (target[0, :, 1, 1] if soft else target[1, 2, 0])
    check_parity(logits[1, :, 2, 0] if not soft else logits[0, :, 1, 1], one, torch.float32,
                 reduction=reduction)


def test_ce_probability_targets_are_not_differentiated():
    logits, q = soft_case(4, 6, torch.float32)
    with pytest.raises(ValueError, match="pass target.detach\\(\\)"):
        is_kernels.cross_entropy_with_score(logits, q.requires_grad_())
    with torch.no_grad():  # nothing to differentiate: accepted
        is_kernels.cross_entropy_with_score(logits, q)


def test_ce_probability_targets_gradcheck_and_opcheck():
    logits, q = soft_case(5, 4, torch.float64)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda z: is_kernels.cross_entropy_with_score(z, q, reduction=reduction,
                                                          label_smoothing=0.1)[0],
            (logits.clone().requires_grad_(),))
        torch.library.opcheck(torch.ops.is_kernels.soft_cross_entropy_with_score.default,
                              (logits.float().requires_grad_(), q.float(), 0.1, reduction, True))
    torch.library.opcheck(torch.ops.is_kernels.soft_cross_entropy_with_score.default,
                          (logits, q, 0.0, "none", False))


def test_ce_parity_torch_compile_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 7, 5, generator=g)
    index = torch.randint(0, 7, (2, 5), generator=g)
    probs = torch.rand(2, 7, 5, generator=g).softmax(1)

    def step(z, index, probs):
        l1, s1 = is_kernels.cross_entropy_with_score(z, index, reduction="none")
        l2, s2 = is_kernels.cross_entropy_with_score(z, probs)
        return l1.sum() + l2, s1, s2

    results = []
    for fn in (torch.compile(step, fullgraph=True), step):
        z = logits.clone().requires_grad_()
        loss, s1, s2 = fn(z, index, probs)
        loss.backward()
        results.append((loss.detach(), s1, s2, z.grad))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e)


@interpreted
@pytest.mark.parametrize("N,C,dtype", [(1, 1, torch.float32), (13, 3, torch.float32),
                                       (9, 37, torch.float64), (2, 4500, torch.float32),
                                       (6, 100, torch.bfloat16)])
def test_triton_probability_targets_interpreted_match_cpp(N, C, dtype):
    """The CUDA kernel (Triton, under the interpreter) against the C++ kernel and float64;
    C = 4500 walks two column chunks; transposed (strided) inputs as the extra-dims path
    can pass them."""
    logits, q = soft_case(N, C, dtype, seed=N * C)
    for reduction in REDUCTIONS:
        for ls in (0.0, 0.15):
            tri = output_grad_triton.soft_cross_entropy_with_score(logits, q, ls, reduction,
                                                                   True)
            cpp = torch.ops.is_kernels.soft_cross_entropy_with_score(logits, q, ls, reduction,
                                                                     True)
            for a, b, what in zip(tri, cpp, ("loss", "score", "grad")):
                assert_close(a, b, OUT_TOL[dtype], what)
            check_parity(logits, q, dtype, impl=lambda z, t, **kw: tri, reduction=reduction,
                         label_smoothing=ls)
    zt, qt = logits.t().contiguous().t(), q.t().contiguous().t()
    tri = output_grad_triton.soft_cross_entropy_with_score(zt, qt, 0.0, "sum", True)
    check_parity(logits, q, dtype, impl=lambda z, t, **kw: tri, reduction="sum")


@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ce_parity_cuda(dtype, reduction):
    for N, C in [(7, 5), (300, 1000), (3, 40000)]:
        logits, q = soft_case(N, C, dtype, seed=N)
        check_parity(logits.cuda(), q.cuda(), dtype, reduction=reduction, label_smoothing=0.1)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 50, 4, 6, generator=g) * 3).to(dtype).cuda()
    target = torch.randint(0, 50, (3, 4, 6), generator=g).cuda()
    check_parity(logits, target, dtype, reduction=reduction)
