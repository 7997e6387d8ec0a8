"""Fused linear + cross-entropy + score against float64 eager F.linear + F.cross_entropy."""
import pytest
import torch
import torch.nn.functional as F
from helpers.asserts import assert_close
from helpers.triton_env import interpreted

import is_kernels
from is_kernels.ops.cuda_path import cuda_path_on_cpu
from is_kernels.ops.linear_cross_entropy import default_chunk_size

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REDUCTIONS = ["mean", "sum", "none"]
# Loss and gradients: rounding of the input dtype (bf16: also its logits, as in eager bf16).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2}
SCORE_TOL = {torch.float64: 2e-7, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def make_case(N, H, V, dtype, bias=True, ignore_index=-100, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) / H ** 0.5 * 3
    b = torch.randn(V, generator=g) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < 0.2] = ignore_index
    cast = lambda a: None if a is None else a.to(dtype).to(device)  # noqa: E731
    return cast(x), cast(w), cast(b), t.to(device)


def soft_target(N, V, dtype, seed=0):
    """Class probabilities [N, V], not normalised (the loss and score take any t >= 0)."""
    return torch.rand(N, V, generator=torch.Generator().manual_seed(seed)).to(dtype)


def reference(x, w, b, t, row_weight, **kw):
    """float64 loss, score (the norm of each row's loss gradient at the logits: ‖p − t‖, 0
    if ignored) and gradients of Σ w_i·loss_i."""
    t = t.double() if t.is_floating_point() else t
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if b is not None else None
    z = F.linear(xd, wd, bd)
    loss = F.cross_entropy(z, t, **kw)
    params = [p for p in (xd, wd, bd) if p is not None]
    grads = torch.autograd.grad((loss * row_weight.double()).sum(), params) \
        if loss.numel() else [torch.zeros_like(p) for p in params]
    kw_none = {k: v for k, v in kw.items() if k != "reduction"}
    zd = z.detach().requires_grad_()
    per_row = F.cross_entropy(zd, t, reduction="none", **kw_none)
    (dz,) = torch.autograd.grad(per_row.sum(), zd)
    return loss.detach(), dz.norm(dim=1), grads


def run(x, w, b, t, row_weight, **kw):
    params = [p.detach().clone().requires_grad_() for p in (x, w, b) if p is not None]
    xb, wb = params[0], params[1]
    bb = params[2] if b is not None else None
    loss, score = is_kernels.linear_cross_entropy_with_score(xb, wb, t, bias=bb, **kw)
    grads = torch.autograd.grad((loss * row_weight.to(loss.dtype)).sum(), params) \
        if loss.numel() else [torch.zeros_like(p) for p in params]
    return loss, score, grads


def check(x, w, b, t, dtype, seed=1, **kw):
    N = x.shape[0]
    shape = (N,) if kw.get("reduction") == "none" else ()
    row_weight = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(x.device) \
        + 0.5
    loss, score, grads = run(x, w, b, t, row_weight, **kw)
    kw.pop("chunk_size", None)
    ref_loss, ref_score, ref_grads = reference(x, w, b, t, row_weight, **kw)
    assert loss.dtype == x.dtype and score.dtype == torch.float32 and not score.requires_grad
    assert_close(loss, ref_loss, TOL[dtype], "loss")
    assert_close(score, ref_score, SCORE_TOL[dtype], "score")
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert g.dtype == x.dtype, name
        assert_close(g, r, TOL[dtype], name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("N,H,V,chunk", [(1, 3, 2, None), (37, 16, 50, 8), (37, 16, 50, None),
                                         (64, 24, 300, 64), (20, 8, 1000, 1), (5, 4, 7, 100)])
def test_matches_float64_eager(N, H, V, chunk, bias, dtype, reduction):
    x, w, b, t = make_case(N, H, V, dtype, bias=bias, seed=N + V)
    check(x, w, b, t, dtype, reduction=reduction, chunk_size=chunk)


@pytest.mark.parametrize("label_smoothing", [0.1, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_label_smoothing_and_ignore_index(label_smoothing, ignore_index, reduction):
    x, w, b, t = make_case(45, 12, 33, torch.float32, ignore_index=ignore_index)
    check(x, w, b, t, torch.float32, reduction=reduction, chunk_size=16,
          ignore_index=ignore_index, label_smoothing=label_smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("N,H,V,chunk", [(37, 16, 50, 8), (5, 4, 7, 100)])
def test_class_probability_targets(N, H, V, chunk, bias, dtype, reduction):
    """[N, V] float targets, sliced per chunk: loss, score ‖(Σ_c t_c)·p − t‖ and the three
    gradients as float64 eager F.cross_entropy with probabilities ("mean": over all rows)."""
    x, w, b, _ = make_case(N, H, V, dtype, bias=bias, seed=N + V)
    q = soft_target(N, V, dtype, seed=N)
    check(x, w, b, q, dtype, reduction=reduction, chunk_size=chunk, label_smoothing=0.1)


def test_all_ignored_and_empty():
    x, w, b, t = make_case(9, 4, 6, torch.float32)
    t[:] = -100
    for reduction in REDUCTIONS:
        check(x, w, b, t, torch.float32, reduction=reduction, chunk_size=4)
    x, w, b, t = make_case(0, 4, 6, torch.float32)
    for reduction in ("sum", "none"):
        check(x, w, b, t, torch.float32, reduction=reduction)
        check(x, w, b, soft_target(0, 6, torch.float32), torch.float32, reduction=reduction)


def test_score_keeps_relative_precision_of_learned_rows():
    """p_y -> 1 with 1 - p_y far below float32 epsilon: the score keeps its relative
    precision (the fused kernel's shift by the largest non-target logit)."""
    N, H, V = 32, 8, 40
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) * 0.1
    t = torch.randint(0, V, (N,), generator=g)
    b = torch.zeros(V)
    b_rows = torch.linspace(20, 60, N)
    # One class per row gets a large margin through the bias of a per-row copy of the head.
    score, ref = [], []
    for i in range(N):
        bi = b.clone()
        bi[t[i]] = b_rows[i]
        _, s = is_kernels.linear_cross_entropy_with_score(x[i:i + 1], w, t[i:i + 1], bias=bi)
        z = F.linear(x[i:i + 1].double(), w.double(), bi.double())
        p_other = torch.softmax(z, 1).scatter(1, t[i:i + 1, None], 0.0)
        ref.append(torch.sqrt((p_other ** 2).sum() + p_other.sum() ** 2))
        score.append(s)
    score, ref = torch.cat(score).double(), torch.stack(ref)
    assert ref.min() < 1e-20
    assert ((score - ref) / ref).abs().max() < 1e-5


def test_default_chunk_size():
    assert default_chunk_size(8192, 32000, 1024, torch.device("cpu")) == 1024
    assert default_chunk_size(8192, 32000, 1024, torch.device("cuda")) == 256
    assert default_chunk_size(16384, 128256, 4096, torch.device("cuda")) == 512
    assert default_chunk_size(10, 32000, 1024, torch.device("cpu")) == 10
    assert default_chunk_size(0, 5, 5, torch.device("cpu")) == 1


def test_gradcheck():
    x, w, b, t = make_case(7, 3, 5, torch.float64)
    for target in (t, soft_target(7, 5, torch.float64)):
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda x, w, b: is_kernels.linear_cross_entropy_with_score(
                    x, w, target, bias=b, reduction=reduction, label_smoothing=0.1,
                    chunk_size=3)[0],
                tuple(a.clone().requires_grad_() for a in (x, w, b)))


def test_no_grad_and_partial_requires_grad():
    x, w, b, t = make_case(10, 4, 6, torch.float32)
    with torch.no_grad():
        loss, score = is_kernels.linear_cross_entropy_with_score(x, w.requires_grad_(), t,
                                                                 bias=b)
    assert not loss.requires_grad
    w = w.detach().requires_grad_()
    loss, _ = is_kernels.linear_cross_entropy_with_score(x, w, t, bias=b)
    loss.backward()
    ref = F.cross_entropy(F.linear(x.double(), w.detach().double().requires_grad_(),
                                   b.double()), t)
    assert w.grad is not None and torch.allclose(loss.double(), ref, atol=1e-5)


def test_backward_twice_with_retain_graph_accumulates():
    x, w, b, t = make_case(12, 5, 9, torch.float32)
    w.requires_grad_()
    for reduction in ("mean", "none"):
        w.grad = None
        loss, _ = is_kernels.linear_cross_entropy_with_score(x, w, t, bias=b,
                                                             reduction=reduction)
        loss.sum().backward(retain_graph=True)
        once = w.grad.clone()
        loss.sum().backward()
        assert torch.allclose(w.grad, 2 * once)


def test_opcheck():
    x, w, b, t = make_case(11, 4, 6, torch.float32)
    op = torch.ops.is_kernels.linear_cross_entropy_with_score.default
    for reduction in REDUCTIONS:
        for bias in (None, b):
            torch.library.opcheck(op, (x.clone().requires_grad_(), w.clone().requires_grad_(),
                                       bias, t, -100, 0.1, reduction, 4, True))
    torch.library.opcheck(op, (x, w, b, t, -100, 0.0, "mean", 4, False))
    q = soft_target(11, 6, torch.float32)
    for reduction in REDUCTIONS:
        torch.library.opcheck(op, (x.clone().requires_grad_(), w.clone().requires_grad_(), b,
                                   q, -100, 0.1, reduction, 4, True))
    backward = torch.ops.is_kernels.linear_cross_entropy_with_score_backward.default
    for target in (t, q):
        torch.library.opcheck(backward, (x, w, b, target, torch.rand(11), -100, 0.0, 4))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    torch._dynamo.reset()
    x, w, b, t = make_case(16, 12, 7, torch.float32)
    head = torch.nn.Linear(12, 7)
    body = torch.nn.Linear(12, 12)

    def step(x, t):
        loss, score = is_kernels.linear_cross_entropy_with_score(
            body(x), head.weight, t, bias=head.bias, reduction=reduction)
        return (loss / (score + 1.0)).mean() if reduction == "none" else loss, score

    results = []
    for fn in (torch.compile(step, fullgraph=True), step):
        loss, score = fn(x, t)
        loss.backward()
        results.append((loss.detach(), score, head.weight.grad.clone(), body.weight.grad.clone()))
        head.zero_grad(), body.zero_grad()
    for a, e in zip(*results):
        assert torch.allclose(a, e, atol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_autocast_bf16_matches_eager_autocast(with_bias, soft):
    """Class probabilities (float32) are rounded a chunk at a time to the bf16 of the
    logits; eager autocast computes the loss in float32: within bf16 rounding."""
    x, w, b, t = make_case(40, 16, 30, torch.float32, bias=with_bias)
    if soft:
        t = soft_target(40, 30, torch.float32)
    runs = []
    for fused in (True, False):
        params = [p.clone().requires_grad_() for p in (x, w, b) if p is not None]
        bb = params[2] if with_bias else None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss, _ = is_kernels.linear_cross_entropy_with_score(params[0], params[1], t,
                                                                     bias=bb, chunk_size=16)
            else:
                loss = F.cross_entropy(F.linear(params[0], params[1], bb), t)
        assert loss.dtype == torch.float32
        runs.append([loss] + list(torch.autograd.grad(loss, params)))
    for a, e in zip(*runs):
        assert a.dtype == e.dtype
        assert_close(a, e, 2e-2, "autocast")


BAD = [
    ("input must be \\[N, H\\] or \\[..., H\\]", lambda x, w, b, t: (x[0], w, b, t), {}),
    ("target must have shape input.shape\\[:-1\\] = \\(2, 3\\)",
     lambda x, w, b, t: (x.view(2, 3, 4), w, b, t), {}),
    ("weight must be \\[V, H\\]", lambda x, w, b, t: (x, w[:, :-1], b, t), {}),
    ("weight must have the dtype of input", lambda x, w, b, t: (x, w.double(), b, t), {}),
    ("bias must have shape", lambda x, w, b, t: (x, w, b[:-1], t), {}),
    ("bias must have the dtype", lambda x, w, b, t: (x, w, b.double(), t), {}),
    ("target must have shape", lambda x, w, b, t: (x, w, b, t[:-1]), {}),
    ("target must be integer class indices or float class probabilities",
     lambda x, w, b, t: (x, w, b, t.bool()), {}),
    ("target \\(class probabilities\\) must have shape \\[N, V\\] = \\[6, 5\\]",
     lambda x, w, b, t: (x, w, b, t.float()), {}),
    ("target must have shape input.shape\\[:-1\\] \\+ \\(V,\\) = \\(2, 3, 5\\)",
     lambda x, w, b, t: (x.view(2, 3, 4), w, b, torch.rand(2, 3, 4)), {}),
    ("target \\(class probabilities\\) must have the dtype of input",
     lambda x, w, b, t: (x, w, b, torch.rand(6, 5, dtype=torch.float64)), {}),
    ("pass target.detach\\(\\)",
     lambda x, w, b, t: (x, w, b, torch.rand(6, 5, requires_grad=True)), {}),
    ("input must be float", lambda x, w, b, t: (x.int(), w.int(), b.int(), t), {}),
    ("out of range", lambda x, w, b, t: (x, w, b, t.index_fill(0, torch.tensor([2]), 99)), {}),
    # a chunk's row and the per-chunk op's name were reported ("cross_entropy_with_score:
    # target[1]" here)
    ("^linear_cross_entropy_with_score: target\\[5\\] = 99 is out of range for 5 classes",
     lambda x, w, b, t: (x, w, b, t.index_fill(0, torch.tensor([5]), 99)), {"chunk_size": 2}),
    ("reduction must be", lambda x, w, b, t: (x, w, b, t), {"reduction": "avg"}),
    ("label_smoothing must be in", lambda x, w, b, t: (x, w, b, t), {"label_smoothing": 2.0}),
    ("chunk_size must be >= 1", lambda x, w, b, t: (x, w, b, t), {"chunk_size": 0}),
    ("chunk_size must be an int", lambda x, w, b, t: (x, w, b, t), {"chunk_size": 2.0}),
    ("ignore_index must be an int", lambda x, w, b, t: (x, w, b, t), {"ignore_index": 1.0}),
    ("weight must be a torch.Tensor", lambda x, w, b, t: (x, w.tolist(), b, t), {}),
]


@pytest.mark.parametrize("match,make,kw", BAD)
def test_bad_input_raises_naming_the_argument(match, make, kw):
    x, w, b, t = make(*make_case(6, 4, 5, torch.float32))
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        is_kernels.linear_cross_entropy_with_score(x, w, t, bias=b, **kw)


BACKWARD_OP = "linear_cross_entropy_with_score_backward"
BAD_BACKWARD = [
    ("chunk_size must be >= 1, got 0", {"chunk_size": 0}),
    ("chunk_size must be >= 1, got -1", {"chunk_size": -1}),
    ("grad_loss must have shape \\[N\\] = \\[6\\]", {"grad_loss": torch.ones(5)}),
    ("grad_loss must have shape \\[N\\] = \\[6\\]", {"grad_loss": torch.ones(1)}),
    ("grad_loss must have shape \\[N\\] = \\[6\\]", {"grad_loss": torch.ones(6, 1)}),
    ("grad_loss must be a floating-point tensor",
     {"grad_loss": torch.ones(6, dtype=torch.int64)}),
    ("weight must be \\[V, H\\]", {"weight": torch.ones(5, 3)}),
    ("target must have shape \\[N\\] = \\[6\\]", {"target": torch.zeros(3, dtype=torch.int64)}),
    ("label_smoothing must be in \\[0, 1\\]", {"label_smoothing": 2.0}),
    ("target\\[5\\] = 9 is out of range for 5 classes",
     {"target": torch.tensor([0, 1, 2, 3, 4, 9])}),
]


@pytest.mark.parametrize("match,change", BAD_BACKWARD)
def test_backward_op_checks_its_arguments(match, change):
    """The raw backward op (what autograd calls for reduction "none") checks what the forward
    checks, and grad_loss; chunk_size < 1 is refused, not a loop that never runs (which
    returned grad_input uninitialised)."""
    x, w, b, t = make_case(6, 4, 5, torch.float32)
    args = {"input": x, "weight": w, "bias": b, "target": t, "grad_loss": torch.ones(6),
            "ignore_index": -100, "label_smoothing": 0.0, "chunk_size": 4}
    args.update(change)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=f"{BACKWARD_OP}: {match}"):
        torch.ops.is_kernels.linear_cross_entropy_with_score_backward(*args.values())


@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_float64_eager(dtype, reduction):
    for N, H, V, chunk in [(37, 16, 50, 8), (300, 64, 20000, None)]:
        x, w, b, t = make_case(N, H, V, dtype, device="cuda")
        check(x, w, b, t, dtype, reduction=reduction, chunk_size=chunk, label_smoothing=0.1)
        q = soft_target(N, V, torch.float64)
        q = (q / q.sum(1, keepdim=True)).to(dtype).cuda()
        check(x, w, b, q, dtype, reduction=reduction, chunk_size=chunk, label_smoothing=0.1)


@interpreted
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_path_on_cpu_matches_float64_eager(dtype, reduction):
    """The CUDA implementation (Triton row kernels + torch matmuls) on CPU tensors: bias or
    not, ignored rows, label smoothing, N not a multiple of the chunk, class probabilities;
    V above the tile kernel's limit (8192 columns) takes the large-vocabulary loop kernel."""
    cases = [((13, 5, 7, 4), dict(bias=True), {}),
             ((6, 3, 40, 4), dict(bias=False, ignore_index=1),
              dict(ignore_index=1, label_smoothing=0.1)),
             ((3, 2, 8200, 2), dict(bias=True), dict(label_smoothing=0.05)),
             ((7, 3, 9, 3), dict(bias=True), dict(label_smoothing=0.1, soft=True))]
    for (N, H, V, chunk), case, kw in cases:
        x, w, b, t = make_case(N, H, V, dtype, seed=N + V, **case)
        if kw.pop("soft", False):
            t = soft_target(N, V, dtype)
        with cuda_path_on_cpu():
            check(x, w, b, t, dtype, reduction=reduction, chunk_size=chunk, **kw)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_allocates_the_logits(reduction, soft):
    """No allocation of forward + backward reaches the size of the [N, V] logits: the
    profiler's largest memory event is O(chunk × V + V × H) (eager's is N × V). With class
    probabilities the caller's [N, V] target exists before the call; nothing of that size
    is added to it."""
    from torch.profiler import ProfilerActivity, profile

    N, H, V, chunk = 512, 16, 2000, 64
    x, w, b, t = make_case(N, H, V, torch.float32)
    if soft:
        t = soft_target(N, V, torch.float32)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    runs = {
        "fused": lambda: is_kernels.linear_cross_entropy_with_score(
            x, w, t, bias=b, reduction=reduction, chunk_size=chunk)[0].sum(),
        "eager": lambda: F.cross_entropy(F.linear(x, w, b), t, reduction=reduction).sum(),
    }
    peak = {}
    for name, fn in runs.items():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn().backward()
        peak[name] = max(e.cpu_memory_usage for e in prof.events())
    logits_bytes = N * V * 4
    assert peak["eager"] >= logits_bytes
    assert peak["fused"] <= 2 * (chunk * V + V * H + N * H) * 4 < logits_bytes / 2


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_leading_dims_are_rows(reduction, soft):
    """[B, T, H] hidden states with [B, T] targets (or [B, T, V] probabilities): the
    flattened rows' loss and gradients; per-row loss and score of shape [B, T]."""
    x, w, b, t = make_case(24, 8, 30, torch.float32)
    if soft:
        t = soft_target(24, 30, torch.float32)
    x3, t3 = x.view(4, 6, 8).requires_grad_(), t.view((4, 6) + t.shape[1:])
    loss3, score3 = is_kernels.linear_cross_entropy_with_score(x3, w, t3, bias=b,
                                                               reduction=reduction, chunk_size=5)
    (grad3,) = torch.autograd.grad(loss3.sum(), x3)
    loss, score, (grad, *_) = run(x, w, b, t, torch.ones(()), reduction=reduction, chunk_size=5)
    shape = (4, 6) if reduction == "none" else ()
    assert loss3.shape == shape and score3.shape == (4, 6) and grad3.shape == (4, 6, 8)
    torch.testing.assert_close(loss3.reshape(-1), loss.reshape(-1).detach())
    torch.testing.assert_close(score3.reshape(-1), score)
    torch.testing.assert_close(grad3.reshape(24, 8), grad)


def test_backward_hands_on_the_forward_gradients_only_when_graph_is_freed():
    """loss.backward() takes the gradients the forward computed (no copy of grad_weight);
    with retain_graph they are copied, and the forward's stay intact for the next backward."""
    x, w, b, t = make_case(8, 4, 6, torch.float32)
    op = torch.ops.is_kernels.linear_cross_entropy_with_score
    for retain in (False, True):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss, _, gi, gw, _ = op(xr, wr, None, t, -100, 0.0, "mean", 3, True)
        kept = gw.clone()
        loss.backward(retain_graph=retain)
        assert (wr.grad.data_ptr() == gw.data_ptr()) is not retain
        torch.testing.assert_close(wr.grad, kept)
        torch.testing.assert_close(gw, kept)
