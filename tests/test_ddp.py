"""DDP integration, two gloo processes on CPU: equal to one process with the global batch."""
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import is_kernels

N, B, STEPS, WORLD = 64, 8, 12, 2


def make_sampler(kind: str) -> is_kernels.Sampler:
    g = torch.Generator().manual_seed(123)
    if kind == "dlis":
        return is_kernels.PresampleImportanceSampler(N, B, tau_threshold=1.0, tau_smoothing=0.5,
                                                   generator=g)
    if kind == "pruning_is":  # STEPS = the warm-up epoch (8 steps) and 4 of a pruned epoch
        return is_kernels.ImportancePruningSampler(N, B, epochs=3, prune_fraction=0.25,
                                                   importance_sampling=True, generator=g)
    if kind == "infobatch":
        return is_kernels.InfoBatchSampler(N, B, epochs=3, generator=g)
    return is_kernels.OnlineImportanceSampler(N, B, warmup_epochs=1, generator=g)


def make_data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def train(sampler, model, X, Y, ddp_model=None):
    """The README's tensor loop; returns the draws. ddp_model: the DDP wrapper, if any."""
    net = ddp_model or model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def score_fn(idx):
        with torch.no_grad():
            return is_kernels.output_grad_norm(model(X[idx]), Y[idx])

    draws = []
    for _ in range(STEPS):
        idx, w = sampler.sample(score_fn)
        loss, score = is_kernels.cross_entropy_with_score(net(X[idx]), Y[idx], reduction="none")
        (w * loss).mean().backward()
        opt.step()
        opt.zero_grad()
        sampler.update(idx, score)
        draws.append(idx)
    return draws


def worker(rank: int, init_file: str, out_dir: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        sampler = is_kernels.ShardedSampler(make_sampler(kind))
        X, Y = make_data()
        draws = train(sampler, model, X, Y, ddp)
        torch.save({"draws": draws, "state": sampler.state_dict(),
                    "weight": model.weight.detach().clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # every rank past its last collective before any rank tears its gloo group down
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
    finally:
        dist.destroy_process_group()


def run_both(tmp_path, kind):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), kind), nprocs=WORLD)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    single = make_sampler(kind)
    X, Y = make_data()
    draws = train(single, model, X, Y)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    return single, model, draws, ranks


def check_shards(draws, ranks):
    for step, global_idx in enumerate(draws):
        shards = [r["draws"][step] for r in ranks]
        assert torch.equal(torch.cat(shards), global_idx)


def test_ddp_online_sampler_equals_single_process(tmp_path):
    single, model, draws, ranks = run_both(tmp_path, "online")
    check_shards(draws, ranks)
    for r in ranks:
        assert torch.allclose(r["state"]["memory"], single.importance, rtol=1e-5)
        assert torch.allclose(r["weight"], model.weight, atol=1e-5)


def test_ddp_dlis_equals_single_process(tmp_path):
    single, model, draws, ranks = run_both(tmp_path, "dlis")
    check_shards(draws, ranks)
    assert single.steps_on > 0
    for r in ranks:
        assert abs(r["state"]["tau"] - single.tau) < 1e-5
        assert torch.allclose(r["weight"], model.weight, atol=1e-5)


def test_ddp_pruning_samplers_equal_single_process(tmp_path):
    for kind, state_key in (("pruning_is", "memory"), ("infobatch", "scores")):
        run_dir = tmp_path / kind
        run_dir.mkdir()
        single, model, draws, ranks = run_both(run_dir, kind)
        check_shards(draws, ranks)
        assert single.epoch == 1 and single.num_kept < N  # the draws reached a pruned epoch
        for r in ranks:
            assert torch.equal(r["state"]["kept_order"], single.state_dict()["kept_order"])
            assert torch.allclose(r["state"][state_key], single.state_dict()[state_key],
                                  rtol=1e-5)
            assert torch.allclose(r["weight"], model.weight, atol=1e-5)


def test_uneven_shards_are_weighted_to_the_global_mean():
    """b = 10 over 4 ranks gives shards of 3, 3, 2, 2: DDP's mean of the per-rank weighted
    means must still be the global batch's weighted mean."""
    x = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 1.0
    world = 4
    single = is_kernels.OnlineImportanceSampler(N, 10, warmup_epochs=0,
                                                generator=torch.Generator().manual_seed(5))
    idx, w = single.sample()
    shards = []
    for rank in range(world):
        inner = is_kernels.OnlineImportanceSampler(N, 10, warmup_epochs=0,
                                                   generator=torch.Generator().manual_seed(5))
        shards.append(is_kernels.ShardedSampler(inner, num_replicas=world, rank=rank).sample())
    assert [s[0].shape[0] for s in shards] == [3, 3, 2, 2]
    assert torch.equal(torch.cat([s[0] for s in shards]), idx)
    ddp_mean = sum(float((w_r.double() * x[i_r]).mean()) for i_r, w_r in shards) / world
    assert abs(ddp_mean - float((w.double() * x[idx]).mean())) < 1e-6


def test_failed_update_stays_pending(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        s = is_kernels.ShardedSampler(is_kernels.OnlineImportanceSampler(N, B, warmup_epochs=0))
        idx, _ = s.sample()
        bad = torch.ones(B)
        bad[1] = float("nan")
        before = s.sampler.importance.clone()
        with pytest.raises(ValueError, match="scores must be finite"):
            s.update(idx, bad)
        assert torch.equal(s.sampler.importance, before)
        s.update(idx, torch.full((B,), 2.0))  # the retry goes through
        assert bool((s.sampler.importance[idx] == 2.0).all())
    finally:
        dist.destroy_process_group()
