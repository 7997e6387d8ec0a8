"""Launch and host-sync budgets of the CUDA path, counted on CPU (bench/launch_counts.py runs
every public operation inside ``cuda_path_on_cpu()`` under a ``LaunchCounter``)."""
import os
import sys

import pytest
import torch
from helpers.triton_env import interpreted
from torch.utils._python_dispatch import TorchDispatchMode

from is_kernels.ops.cuda_path import LaunchCounter, cuda_path_on_cpu

pytest.importorskip("triton")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import launch_counts  # noqa: E402

pytestmark = interpreted

# Operation (a row of launch_counts.OPERATIONS) -> most kernel launches allowed.
BUDGETS = {
    "SumTree.update (fused, k <= FUSED_MAX)": 3,
    "SumTree.update (multi-program, k > FUSED_MAX)": 3,
    "MinTree.update (fused, k <= FUSED_MAX)": 3,
    "SumTree.sample": 2,
    # the range, mass and priority checks run in the kernels, which record errors
    "SumTree.query": 1,
    "MinTree.query": 1,
    "SumTree.scan_lower_bound": 1,
    "PrioritizedReplay.add": 4,
    "PrioritizedReplay.add (max priority)": 4,
    "PrioritizedReplay.update": 4,
    "PrioritizedReplay.sample": 2,
    "online IS step (draw + update)": 4,
    "AliasTable build (group 16)": 6,
    "AliasTable build (group 1)": 6,
    "AliasTable.sample": 2,
    # mean: every program of the CE kernel counts the non-ignored rows itself.
    "CE forward + backward (mean)": 2,
    "CE forward + backward (sum)": 2,
    "CE forward + backward (none)": 2,
    # Linear CE, per chunk of rows: the projection, the row kernel, the copies of the chunk's
    # losses and scores into the outputs, grad_input's matmul, grad_weight's accumulating
    # matmul, and for a bias its column sum and accumulation (8). Once: the zeroed
    # accumulators (2), the loss sum, the count of non-ignored rows kept on the device (ne,
    # sum, cast), the mean's division, the clamped count dividing the three gradients (4),
    # and the backward's three scaling kernels, which return at once for an incoming
    # gradient of 1 (14). The matmuls of a chunk dwarf its launches: chunks are large.
    f"linear CE fwd + bwd (mean, bias, {launch_counts.LCE_CHUNKS} chunks)":
        8 * launch_counts.LCE_CHUNKS + 14,
    # "none": the forward per chunk (projection, row kernel, two copies: 4); the backward
    # recomputes each chunk (projection, row kernel: 2) and weights its rows (grad_input's
    # matmul and row scaling, the scaled input, grad_weight's matmul: 4); grad_weight's
    # zeroed accumulator once.
    f"linear CE fwd + bwd (none, {launch_counts.LCE_CHUNKS} chunks)":
        10 * launch_counts.LCE_CHUNKS + 1,
    # Class probabilities, no bias: per chunk the projection, the label smoothing written to
    # the device for the row kernel, the row kernel, two copies, two gradient matmuls (7);
    # once: grad_weight's accumulator, the loss sum, the row count, the mean's division, the
    # count dividing the two gradients (clamp + 2) and the backward's two scaling kernels (9).
    f"linear CE fwd + bwd (mean, probabilities, {launch_counts.LCE_CHUNKS} chunks)":
        7 * launch_counts.LCE_CHUNKS + 9,
}


@pytest.fixture(scope="module")
def rows():
    return {r["operation"]: r for r in launch_counts.counts()}


@pytest.mark.parametrize("operation", sorted(BUDGETS))
def test_launch_budget(rows, operation):
    row = rows[operation]
    assert row["launches"] <= BUDGETS[operation], row


@pytest.mark.parametrize("operation", sorted(BUDGETS))
def test_no_host_sync(rows, operation):
    assert rows[operation]["syncs"] == 0, rows[operation]


def test_every_operation_has_a_budget(rows):
    assert set(rows) == set(BUDGETS)


def test_the_counter_sees_syncs_and_launches():
    """The counter is not blind: .item(), bool() and torch.equal count as syncs; a Triton
    launch and an aten kernel as launches; views and allocations as nothing."""
    from is_kernels.ops import sum_tree_triton

    t = torch.arange(4.0)
    with LaunchCounter() as c, cuda_path_on_cpu():
        t.view(2, 2)
        torch.empty(3)
        (t + 1).sum().item()
        bool(t[0] > 0)
        torch.equal(t, t.clone())
        sum_tree_triton.build(t)
    assert c.num_syncs == 3, c.summary()
    assert c.aten["add"] == 1 and c.aten["sum"] == 1 and c.triton["_level_kernel"] == 2
    assert "view" not in c.aten and "empty" not in c.aten


def test_the_counter_sees_copies_of_aliasing_ops():
    """Inside a mode's handler (where cuda_path_on_cpu() runs a CUDA implementation) ``to``,
    ``contiguous`` and ``reshape`` arrive whole, not decomposed: each counts when it copies,
    not when it returns a view."""
    class Inner(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.neg.default:
                x = args[0]
                x.to(torch.float32), x.contiguous(), x.reshape(-1)  # views
                x.to(torch.float64), x.t().contiguous(), x.t().reshape(-1)  # copies
            return out

    t = torch.ones(2, 3)
    with LaunchCounter() as c, Inner():
        torch.neg(t)
    assert dict(c.aten) == {"neg": 1, "to": 1, "contiguous": 1, "reshape": 1}, c.summary()


def test_sampler_update_with_an_equal_copy_does_not_sync():
    """On the CUDA path the sampler matches an update to its draw by memory, not by value
    (torch.equal would sync): the same storage is accepted, an equal copy refused."""
    from is_kernels.samplers import OnlineImportanceSampler

    with cuda_path_on_cpu():
        s = OnlineImportanceSampler(16, 4, warmup_epochs=0)
        idx, _ = s.sample()
        with LaunchCounter() as c:
            s.update(idx[:], torch.ones(4))  # a view of the draw
        assert c.num_syncs == 0
        idx, _ = s.sample()
        with pytest.raises(ValueError, match="indices of a draw"):
            s.update(idx.clone(), torch.ones(4))
