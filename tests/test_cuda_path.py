"""The CUDA path of every public API, run on CPU tensors (``cuda_path_on_cpu``), against the
C++ path: ops, SumTree, AliasTable, samplers, one training step. Duplicated indices included:
inside the context ``index_put_`` keeps the first of duplicated entries (a legal CUDA
outcome), so glue that relies on "the last write wins" fails here as it would on a GPU."""
import math

import pytest
import torch
from helpers.triton_env import interpreted

import is_kernels
from is_kernels import AliasTable, MinTree, PrioritizedReplay, SumTree
from is_kernels.ops.cuda_path import LaunchCounter, cuda_path_on_cpu, uses_cuda_path
from is_kernels.samplers import (ImportancePruningSampler, OnlineImportanceSampler,
                                  PresampleImportanceSampler)

pytestmark = interpreted


def both_paths(fn):
    """(fn() on the C++ path, fn() on the CUDA path), each on fresh CPU tensors."""
    cpp = fn()
    with cuda_path_on_cpu():
        cuda = fn()
    return cpp, cuda


def test_switch_routes_cpu_tensors_to_the_cuda_path():
    t = torch.zeros(3)
    assert not uses_cuda_path(t)
    with cuda_path_on_cpu():
        assert uses_cuda_path(t)
        assert SumTree(4).check_values is False  # the CUDA default: never sync
    assert not uses_cuda_path(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_tree(dtype):
    def run():
        g = torch.Generator().manual_seed(1)
        tree = SumTree(37, dtype=dtype, check_values=False)
        tree.build(torch.rand(37, generator=g, dtype=dtype))
        idx = torch.tensor([5, 36, 5, 0, 17, 5, 36])  # duplicates: the last one wins
        tree.update(idx, torch.rand(7, generator=g, dtype=dtype))
        draws = tree.sample(300, generator=g)
        tree.raise_errors()
        return tree.values.clone(), tree._inner.clone(), draws, tree.total()

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp, cuda):
        assert torch.equal(a, b)


def test_sum_tree_invalid_batch_recorded_and_dropped():
    def run():
        tree = SumTree(8, check_values=False)
        tree.build(torch.ones(8))
        tree.update(torch.tensor([1, 8]), torch.ones(2))
        tree.update(torch.tensor([1, 2]), torch.tensor([2.0, float("nan")]))
        with pytest.raises(RuntimeError, match="index out of range"):
            tree.raise_errors()
        return tree.values.clone(), tree._inner.clone()

    cpp, cuda = both_paths(run)
    assert all(torch.equal(a, b) for a, b in zip(cpp, cuda))
    assert torch.equal(cuda[0], torch.ones(8))


def test_alias_table():
    def run():
        g = torch.Generator().manual_seed(2)
        w = torch.rand(300, generator=g)
        w[::7] = 0
        return [AliasTable(w, group_size=gs).probs for gs in (1, 16)]

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad,match", [(float("nan"), "not finite"), (0.0, "all weights")])
def test_alias_table_invalid_weights(bad, match):
    def run():
        w = torch.zeros(40) if bad == 0.0 else torch.rand(40)
        w[3] = bad
        table = AliasTable(w, check_values=False)
        draws = table.sample(20)
        with pytest.raises(RuntimeError, match=match):
            table.raise_errors()
        return draws

    cpp, cuda = both_paths(run)
    assert (cpp == -1).all() and (cuda == -1).all()


def assert_same(a, b):
    """Bit-identical, NaN where the other is NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_min_tree_range_queries_and_scan(dtype):
    def run():
        g = torch.Generator().manual_seed(5)
        mins = MinTree(37, dtype=dtype, check_values=False)
        v = torch.randn(37, generator=g, dtype=dtype)
        v[::5] = math.inf
        mins.build(v)
        mins.update(torch.tensor([5, 36, 5, 0, 17, 5, 36]), torch.randn(7, generator=g,
                                                                        dtype=dtype))
        mins.update(torch.tensor([1, 2]), torch.tensor([0.0, math.nan], dtype=dtype))  # dropped
        sums = SumTree(37, dtype=dtype, check_values=False)
        sums.build(torch.rand(37, generator=g, dtype=dtype))
        ends = torch.randint(0, 38, (2, 40), generator=g).sort(0).values
        start = torch.cat([ends[0], torch.tensor([-1, 4])])  # two ranges out of bounds: NaN
        end = torch.cat([ends[1], torch.tensor([3, 38])])
        mass = torch.cat([torch.rand(100, generator=g, dtype=torch.float64) * sums.total() * 1.1,
                          torch.tensor([-1.0, math.nan], dtype=torch.float64)])  # -1
        out = [mins.values.clone(), mins.inner_nodes.clone(), mins.min(),
               mins.query(start, end), sums.query(start, end), sums.scan_lower_bound(mass)]
        with pytest.raises(RuntimeError, match="NaN value"):
            mins.raise_errors()
        with pytest.raises(RuntimeError, match="query"):
            sums.raise_errors()
        return out

    cpp, cuda = both_paths(run)
    assert cpp[3][-2:].isnan().all() and (cpp[5][-2:] == -1).all()
    for a, b in zip(cpp, cuda):
        assert_same(a, b)


@pytest.mark.parametrize("tree_class", [SumTree, MinTree])
def test_query_and_scan_record_in_their_kernel(tree_class):
    """On the CUDA path a query or scan with check_values=False is one kernel, which records
    a bad range or mass itself (also when only a later program has one) and nothing else."""
    from is_kernels.ops import sum_tree_triton

    n = sum_tree_triton.BLOCK + 3  # two query programs, many scan programs
    with cuda_path_on_cpu():
        tree = tree_class(50, check_values=False)
        tree.build(torch.rand(50, generator=torch.Generator().manual_seed(3)))
        start = torch.randint(0, 25, (n,), generator=torch.Generator().manual_seed(4))
        end = start + 20
        tree.query(start, end)
        tree.raise_errors()  # nothing recorded
        end[-1] = 51
        got = tree.query(start, end)
        assert got[-1].isnan() and not got[:-1].isnan().any()
        with pytest.raises(RuntimeError, match="query.. got a range"):
            tree.raise_errors()
        if tree_class is SumTree:
            mass = torch.rand(n, generator=torch.Generator().manual_seed(5)) * 10
            tree.scan_lower_bound(mass)
            tree.raise_errors()
            mass[-1] = math.nan
            assert tree.scan_lower_bound(mass)[-1] == -1
            with pytest.raises(RuntimeError, match="scan_lower_bound.. got a mass"):
                tree.raise_errors()


@pytest.mark.parametrize("dtype,beta", [(torch.float32, 0.5), (torch.float64, 0.4),
                                        (torch.float32, 0.0)])
def test_prioritized_replay_ops(dtype, beta):
    """PrioritizedReplay's add, update and sample (C++: sum_tree_add_priorities,
    sum_tree_set_priorities, sum_tree_sample_weighted). The powers ``(p + eps) ** alpha`` and
    ``ratio ** -beta`` come from std::pow on the C++ path and from torch.pow and the sample
    kernel (in float64) on the CUDA path: 1 ulp apart at most."""
    def run():
        g = torch.Generator().manual_seed(6)
        per = PrioritizedReplay(50, alpha=0.7, dtype=dtype)
        per.add(40, torch.rand(40, generator=g))
        per.update(torch.tensor([3, 17, 3, 39, 0, 17]), torch.rand(6, generator=g))
        per.add(15)  # at the max priority, wrapping around the ring
        idx, w = per.sample(200, beta=beta, generator=g)
        return [per.priorities.clone(), per._sum.inner_nodes.clone(), per._min.values.clone(),
                per._min.inner_nodes.clone(), per.max_priority.clone(), idx, w]

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp, cuda):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=2.5e-7, atol=0)
    with cuda_path_on_cpu():  # an invalid batch: dropped and recorded, no raise, no sync
        per = PrioritizedReplay(8)
        per.add(8, torch.rand(8))
        before = [t.clone() for t in per._trees]
        per.update(torch.tensor([1, 2]), torch.tensor([1.0, -1.0]))
        assert all(torch.equal(a, b) for a, b in zip(before, per._trees))
        with pytest.raises(RuntimeError, match="dropped"):
            per.raise_errors()
        zero = PrioritizedReplay(4, eps=0.0)  # all priorities zero: -1 draws, NaN weights
        zero.add(4, torch.zeros(4))
        idx, w = zero.sample(300)
        assert (idx == -1).all() and w.isnan().all()
        with pytest.raises(RuntimeError, match="all priorities zero"):
            zero.raise_errors()


def test_prioritized_replay_op_kernels():
    """The ops sum_tree_add_priorities, sum_tree_set_priorities and sum_tree_sample_weighted
    themselves (PrioritizedReplay calls the Triton kernels directly on the CUDA path): the
    same slots, trees, max priority and draws on both paths, within 1 ulp for the powers."""
    ops = torch.ops.is_kernels

    def run():
        g = torch.Generator().manual_seed(8)
        s, m = SumTree(30), MinTree(30)
        trees = (s.values, s.inner_nodes, m.values, m.inner_nodes)
        most = torch.ones((), dtype=torch.float64)
        slots, hi = ops.sum_tree_add_priorities(*trees, most, 0, 25,
                                                torch.rand(25, generator=g) * 3, 0.6, 1e-4)
        wrapped, _ = ops.sum_tree_add_priorities(*trees, most, 25, 10, None, 0.6, 1e-4)
        hi2 = ops.sum_tree_set_priorities(*trees, most, torch.tensor([3, 7, 3]),
                                          torch.tensor([4.0, 0.5, 5.0]), 0.6, 1e-4, 30)
        idx, w = ops.sum_tree_sample_weighted(*trees, 100, 0.4,
                                              torch.Generator().manual_seed(9))
        return [slots, wrapped, hi, hi2, most.clone(), *[t.clone() for t in trees], idx, w]

    cpp, cuda = both_paths(run)
    assert cpp[1].tolist() == [25, 26, 27, 28, 29, 0, 1, 2, 3, 4] and float(cpp[4]) == 5.0
    for a, b in zip(cpp, cuda):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=2.5e-7, atol=0)


def test_descents_never_return_an_index_out_of_range():
    """Inner nodes that do not match the leaves: C++ raises, the CUDA path (no sync) draws
    -1 where a descent ends on the padding."""
    leaves = torch.rand(5, dtype=torch.float64) + 0.1
    bad = torch.zeros(8, dtype=torch.float64)
    bad[1] = bad[3] = bad[7] = 1.0  # root -> 3 -> 7: padding slot 7 - 8 + 8
    u = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="padding"):
        torch.ops.is_kernels.sum_tree_sample(leaves, bad, u)
    with cuda_path_on_cpu():
        out = torch.ops.is_kernels.sum_tree_sample(leaves, bad, u)
        scan = torch.ops.is_kernels.sum_tree_scan_lower_bound(leaves, bad, u)
    assert (out == -1).all() and (scan == -1).all()


@pytest.mark.parametrize("group", [1, 16])
def test_alias_guards(group):
    """Subnormal weights give the table of the C++ build; an alias entry out of range draws
    -1 on the CUDA path (C++ raises), never an index out of range."""
    def run():
        w = torch.full((40,), 1e-320, dtype=torch.float64)
        w[5] = 3e-320
        return AliasTable(w, group_size=group).probs

    cpp, cuda = both_paths(run)
    torch.testing.assert_close(cuda, cpp, rtol=1e-12, atol=0)
    w = torch.rand(7 * group, dtype=torch.float64) + 0.1
    prob, alias, sums = torch.ops.is_kernels.alias_table_build(w, group)
    alias[3], prob[3] = 7, 0.0  # every draw of bucket 3 takes its (out of range) alias
    u = torch.rand((3, 200), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.is_kernels.alias_table_sample(prob, alias, sums, w, u, group)
    with cuda_path_on_cpu():
        out = torch.ops.is_kernels.alias_table_sample(prob, alias, sums, w, u, group)
    bucket3 = (u[0] * 7).long() == 3
    assert bucket3.any() and (out[bucket3] == -1).all()
    assert ((out[~bucket3] >= 0) & (out[~bucket3] < 7 * group)).all()


def _online_op_state(n=40):
    g = torch.Generator().manual_seed(3)
    memory = torch.rand(n, generator=g) + 0.05
    seen = torch.rand(n, generator=g) < 0.6
    active = torch.rand(n, generator=g) < 0.8
    leaves = torch.where(active, memory, 0.0)
    return [memory, seen, active, leaves, torch.ops.is_kernels.sum_tree_build(leaves)]


def test_online_ops_with_duplicates():
    def run():
        state = _online_op_state()
        idx = torch.tensor([3, 17, 3, 39, 0, 17, 17, 3])
        scores = torch.arange(1.0, 9.0)
        torch.ops.is_kernels.online_is_update(*state, idx, scores, 0.25)
        u = torch.rand((3, 64), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        active_idx = state[2].nonzero().squeeze(1)
        draws = torch.ops.is_kernels.online_is_draw(state[3], state[4], state[0], active_idx,
                                                    u, 0.1, True)
        return [*state, *draws]

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp[:-1], cuda[:-1]):
        assert torch.equal(a, b)
    assert_weights_close(cpp[-1], cuda[-1])


def assert_weights_close(a, b):
    """Draw weights 1/(n p): the -march=native C++ build may contract (1-λ)·share + λ/n
    into an FMA (as Triton does on a GPU), the interpreter does not: 1 ulp apart."""
    torch.testing.assert_close(a, b, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("reduction,dtype,seed", [
    ("mean", torch.float32, None), ("mean", torch.float32, 1.0), ("sum", torch.float64, 0.5),
    ("none", torch.bfloat16, "rows")])
def test_cross_entropy(reduction, dtype, seed):
    """Forward + backward, with an incoming gradient of exactly 1 (the kernel's early
    return), another scalar, or one per row."""
    def run():
        g = torch.Generator().manual_seed(9)
        logits = torch.randn(7, 13, generator=g).to(dtype).requires_grad_()
        target = torch.tensor([0, 3, -100, 12, 4, 4, -100])
        loss, score = is_kernels.cross_entropy_with_score(logits, target, reduction=reduction,
                                                          label_smoothing=0.05)
        grad = (torch.arange(7.0).to(dtype) if seed == "rows" else
                None if seed is None else torch.tensor(seed, dtype=dtype))
        loss.backward(grad)
        return loss, score, logits.grad

    cpp, cuda = both_paths(run)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-7)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_soft_targets_and_nd_inputs(reduction):
    """Class-probability targets and [N, C, d] logits (rows of the flattened logits)."""
    def run():
        g = torch.Generator().manual_seed(10)
        logits = torch.randn(5, 7, generator=g, requires_grad=True)
        probs = torch.rand(5, 7, generator=g).softmax(1)
        loss, score = is_kernels.cross_entropy_with_score(logits, probs, reduction=reduction,
                                                          label_smoothing=0.1)
        loss.sum().backward()
        seq = torch.randn(2, 6, 3, generator=g, requires_grad=True)
        target = torch.tensor([[0, 5, -100], [2, 2, 1]])
        seq_loss, seq_score = is_kernels.cross_entropy_with_score(seq, target,
                                                                  reduction=reduction)
        (2 * seq_loss.sum()).backward()
        return loss, score, logits.grad, seq_loss, seq_score, seq.grad

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_output_grad_ops():
    def run():
        g = torch.Generator().manual_seed(5)
        logits = torch.randn(6, 11, generator=g, requires_grad=True)
        target = torch.tensor([0, 3, -100, 10, 4, 4])
        loss, score = is_kernels.cross_entropy_with_score(logits, target, label_smoothing=0.1)
        loss.backward()
        pred = torch.randn(5, 3, generator=g, requires_grad=True)
        mse, mse_score = is_kernels.mse_with_score(pred, torch.zeros(5, 3), reduction="sum")
        (2 * mse).backward()
        norm = is_kernels.output_grad_norm(logits.detach(), target)
        return loss, score, logits.grad, mse, mse_score, pred.grad, norm

    cpp, cuda = both_paths(run)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_samplers_choose_check_values_as_on_cuda():
    """Inside the switch the samplers default to check_values=False, as on CUDA (the check
    syncs); switched on, update checks in Python before the CUDA op, which records invalid
    scores instead of raising, so the sampler is unchanged by a bad update."""
    assert OnlineImportanceSampler(16, 4).check_values is True
    with cuda_path_on_cpu():
        s = OnlineImportanceSampler(16, 4, warmup_epochs=0)
        assert s.check_values is False
        assert ImportancePruningSampler(16, 4, epochs=3).check_values is False
        s.check_values = True
        idx, _ = s.sample()
        before = s.state_dict()
        with pytest.raises(ValueError, match="scores"):
            s.update(idx, torch.tensor([1.0, math.nan, 1.0, 1.0]))
        after = s.state_dict()
        for key in ("memory", "seen"):
            assert torch.equal(before[key], after[key])


def test_label_smoothing_tensor_on_the_cuda_path_is_refused():
    """A 0-dim label_smoothing tensor is read on the host: on the CPU path a CPU one is taken;
    on the CUDA path (a CUDA one on a GPU) reading it would be a host sync, so it is refused
    with an error naming the argument, before anything runs."""
    logits = torch.randn(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    loss, _ = is_kernels.cross_entropy_with_score(logits, target,
                                                  label_smoothing=torch.tensor(0.1))
    ref, _ = is_kernels.cross_entropy_with_score(logits, target, label_smoothing=0.1)
    assert torch.equal(loss, ref)
    with cuda_path_on_cpu():
        for fn in (is_kernels.cross_entropy_with_score, is_kernels.output_grad_norm):
            with pytest.raises(TypeError, match="label_smoothing must be a float or a 0-dim "
                                                "CPU tensor"):
                fn(logits, target, label_smoothing=torch.tensor(0.1))


def _online_steps():
    """Three steps of the online sampler past its warm-up, with duplicated draws."""
    s = OnlineImportanceSampler(20, 16, warmup_epochs=0, momentum=0.3,
                                generator=torch.Generator().manual_seed(6))
    out = []
    for step in range(3):
        idx, w = s.sample()
        s.update(idx, (idx.float() * 0.37 + step) % 5)
        out += [idx, w]
    return out + [s.importance.clone(), s.tree.values.clone(), s.tree._inner.clone()]


def test_online_sampler():
    cpp, cuda = both_paths(_online_steps)
    assert cpp[0].unique().numel() < cpp[0].numel()  # the draws repeat indices
    for i, (a, b) in enumerate(zip(cpp, cuda)):
        if i in (1, 3, 5):  # the weights
            assert_weights_close(a, b)
        else:
            assert torch.equal(a, b)


def _pruning_epochs():
    """Three epochs of importance pruning with importance-sampled draws."""
    s = ImportancePruningSampler(40, 8, epochs=3, importance_sampling=True,
                                 generator=torch.Generator().manual_seed(10))
    out = []
    for epoch in range(3):
        s.set_epoch(epoch)
        for _ in range(len(s)):
            idx, w = s.sample()
            s.update(idx, (idx.float() * 0.29 + epoch) % 3)
            out += [idx, w]
        out.append(s.kept.clone())
    return out + [s.importance.clone(), s.tree.values.clone()]


def _dlis_steps():
    """DLIS steps past its switch, scoring presampled candidates with output_grad_norm."""
    torch.manual_seed(11)
    logits, y = torch.randn(30, 4), torch.randint(0, 4, (30,))
    s = PresampleImportanceSampler(30, 5, tau_threshold=1.0, tau_smoothing=0.0,
                                   generator=torch.Generator().manual_seed(12))

    def score_fn(i):
        return is_kernels.output_grad_norm(logits[i], y[i])

    out = []
    for _ in range(4):
        idx, w = s.sample(score_fn)
        s.update(idx, score_fn(idx))
        out += [idx, w]
    assert s.steps_on > 0  # importance draws from scored candidates happened
    return out


@pytest.mark.parametrize("run", [_pruning_epochs, _dlis_steps])
def test_other_samplers(run):
    cpp, cuda = both_paths(run)
    assert len(cpp) == len(cuda)
    for a, b in zip(cpp, cuda):
        if a.dtype == torch.float32:  # weights, scores: see assert_weights_close
            torch.testing.assert_close(a, b, rtol=2.5e-7, atol=0)
        else:
            assert torch.equal(a, b)


def _training_step():
    """One importance-sampled training step of a linear model: parameters and sampler state."""
    torch.manual_seed(7)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = OnlineImportanceSampler(24, 8, warmup_epochs=0,
                                generator=torch.Generator().manual_seed(8))
    for _ in range(2):
        idx, w = s.sample()
        loss, score = is_kernels.cross_entropy_with_score(model(x[idx]), y[idx],
                                                          reduction="none")
        (w * loss).mean().backward()
        opt.step()
        opt.zero_grad()
        s.update(idx, score)
    return [p.detach().clone() for p in model.parameters()] + [s.importance.clone()]


def test_training_step():
    cpp, cuda = both_paths(_training_step)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype,bias,label_smoothing,ignore_index,soft", [
    (torch.float32, True, 0.0, -100, False), (torch.float32, False, 0.1, 2, False),
    (torch.float64, True, 0.1, -100, False), (torch.float64, False, 0.0, 2, False),
    (torch.float32, True, 0.1, -100, True)])
def test_linear_cross_entropy(reduction, dtype, bias, label_smoothing, ignore_index, soft):
    """The fused linear CE on its CUDA path (the Triton row kernel, torch matmuls) against
    its C++ path: loss, score and the three gradients, 11 rows in chunks of 4 (the last one
    short), an incoming gradient other than 1 (one per row for "none"), class indices or
    probabilities; no host sync."""
    def run():
        g = torch.Generator().manual_seed(13)
        x = torch.randn(11, 6, generator=g, dtype=dtype, requires_grad=True)
        w = torch.randn(9, 6, generator=g, dtype=dtype, requires_grad=True)
        b = torch.randn(9, generator=g, dtype=dtype, requires_grad=True) if bias else None
        t = torch.randint(0, 9, (11,), generator=g)
        t[[3, 8]] = ignore_index
        if soft:
            t = torch.rand(11, 9, generator=g, dtype=dtype)
        loss, score = is_kernels.linear_cross_entropy_with_score(
            x, w, t, bias=b, ignore_index=ignore_index, label_smoothing=label_smoothing,
            reduction=reduction, chunk_size=4)
        loss.backward(torch.rand(loss.shape, generator=g, dtype=dtype) + 0.5)
        return [loss.detach(), score, x.grad, w.grad] + ([b.grad] if bias else [])

    cpp = run()
    with LaunchCounter() as c, cuda_path_on_cpu():
        cuda = run()
    # 3 chunks, recomputed in the backward for "none"
    kernel = "_soft_ce_kernel" if soft else "_ce_tile_kernel"
    assert c.triton[kernel] == (6 if reduction == "none" else 3), c.summary()
    assert c.num_syncs == 0, c.summary()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, b in zip(cpp, cuda):
        torch.testing.assert_close(a, b, **tol)
