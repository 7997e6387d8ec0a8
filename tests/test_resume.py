"""Mid-epoch resume through a DataLoader: a run checkpointed in the middle of an epoch (model,
optimizer, sampler, loader) and resumed into fresh objects trains on the same batches, with
the same weights, to the same parameters, for every sampler, with 0 and 2 workers."""
import copy

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import is_kernels

stateful = pytest.importorskip("torchdata.stateful_dataloader",
                               reason="torchdata is not installed")

N, B, EPOCHS = 60, 8, 3
CHECKPOINT = (1, 3)  # after the update of step 3 of epoch 1 (IS on, pruning on)


class Points(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 4, generator=g)
        self.y = torch.randint(3, (N,), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_sampler(name):
    g = torch.Generator().manual_seed(1)
    if name == "uniform":
        return is_kernels.UniformSampler(N, B, generator=g)
    if name == "online":
        return is_kernels.OnlineImportanceSampler(N, B, generator=g)
    if name == "dlis":
        return is_kernels.PresampleImportanceSampler(N, B, tau_threshold=1.0, tau_smoothing=0.5,
                                                     generator=g)
    if name.startswith("pruning"):
        return is_kernels.ImportancePruningSampler(
            N, B, epochs=EPOCHS, prune_fraction=0.3,
            importance_sampling=name == "pruning_is", generator=g)
    return is_kernels.InfoBatchSampler(N, B, epochs=EPOCHS, prune_ratio=0.5, generator=g)


SAMPLERS = ["uniform", "online", "dlis", "pruning", "pruning_is", "infobatch"]


class Run:
    """Model, optimizer, sampler and loader of one training run."""

    def __init__(self, name, num_workers, data, plain=False):
        torch.manual_seed(2)
        self.data = data
        self.model = torch.nn.Linear(4, 3)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.sampler = make_sampler(name)
        self.batch_sampler = is_kernels.ImportanceBatchSampler(self.sampler, self.score)
        self.plain = plain  # a plain DataLoader: the batch sampler's state is saved instead
        loader = DataLoader if plain else stateful.StatefulDataLoader
        self.loader = loader(is_kernels.IndexedDataset(data), batch_sampler=self.batch_sampler,
                             num_workers=num_workers)

    def score(self, idx):
        with torch.no_grad():
            return is_kernels.output_grad_norm(self.model(self.data.x[idx]), self.data.y[idx])

    def checkpoint(self):
        return copy.deepcopy({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                              "sampler": self.sampler.state_dict(),
                              "loader": (self.batch_sampler if self.plain
                                         else self.loader).state_dict()})

    def load(self, ckpt):
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["opt"])
        self.sampler.load_state_dict(ckpt["sampler"])  # the sampler before the loader
        (self.batch_sampler if self.plain else self.loader).load_state_dict(ckpt["loader"])

    def train(self, first_epoch, checkpoint_at=None):
        """Trains to the end; returns the batches (epoch, idx, w) and the checkpoint taken
        right after the update of step checkpoint_at = (epoch, step), with its position."""
        batches, ckpt = [], None
        for epoch in range(first_epoch, EPOCHS):
            self.sampler.set_epoch(epoch)
            for step, ((x, y), idx, w) in enumerate(self.loader):
                loss, score = is_kernels.cross_entropy_with_score(self.model(x), y,
                                                                  reduction="none")
                (w * loss).mean().backward()
                self.opt.step()
                self.opt.zero_grad()
                self.sampler.update(idx, score if self.sampler.score_type == "output_grad"
                                    else loss.detach())
                batches.append((epoch, idx, w))
                if (epoch, step) == checkpoint_at:
                    ckpt = (len(batches), self.checkpoint())
        return batches, ckpt


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", SAMPLERS)
def test_mid_epoch_resume_is_bit_identical(name, num_workers):
    data = Points()
    full = Run(name, num_workers, data)
    batches, (done, ckpt) = full.train(0, checkpoint_at=CHECKPOINT)
    if num_workers:  # the loader had drawn ahead: those draws are in the checkpoint
        assert len(ckpt["sampler"]["pending"]) > 0
    resumed = Run(name, num_workers, data)
    resumed.load(ckpt)
    again, _ = resumed.train(CHECKPOINT[0])
    rest = batches[done:]
    assert len(rest) > 0 and len(again) == len(rest)
    for (e1, i1, w1), (e2, i2, w2) in zip(rest, again):
        assert e1 == e2 and torch.equal(i1, i2) and torch.equal(w1, w2)
    for p1, p2 in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2)
    if name == "dlis":
        assert full.sampler.tau == resumed.sampler.tau and full.sampler.steps_on > 0
    if name.startswith("pruning") or name == "infobatch":
        assert full.sampler.epoch_report()[-1]["kept"] == resumed.sampler.epoch_report()[-1]["kept"]


@pytest.mark.parametrize("name", ["online", "pruning"])
def test_plain_loader_without_workers_resumes_through_the_batch_sampler_state(name):
    data = Points()
    full = Run(name, 0, data, plain=True)
    batches, (done, ckpt) = full.train(0, checkpoint_at=CHECKPOINT)
    resumed = Run(name, 0, data, plain=True)
    resumed.load(ckpt)
    again, _ = resumed.train(CHECKPOINT[0])
    assert len(again) == len(batches) - done
    for (e1, i1, w1), (e2, i2, w2) in zip(batches[done:], again):
        assert e1 == e2 and torch.equal(i1, i2) and torch.equal(w1, w2)
    for p1, p2 in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2)


def test_loader_state_without_the_matching_sampler_state_raises():
    """The loader's state names the draws it handed out; a sampler that did not make them
    (its state was not loaded) cannot continue it, and says so."""
    data = Points()
    full = Run("online", 2, data)
    _, (_, ckpt) = full.train(0, checkpoint_at=CHECKPOINT)
    resumed = Run("online", 2, data)
    resumed.loader.load_state_dict(ckpt["loader"])
    with pytest.raises(RuntimeError, match="the sampler's state does not continue the "
                                           "loader's"):
        next(iter(resumed.loader))



def test_a_resume_the_sampler_cannot_continue_is_kept_until_it_can():
    """Iterating a loaded loader state with a sampler that did not make its draws raises and
    leaves the loaded state in place (it was consumed, and the next iteration silently
    started a fresh epoch); once the matching sampler state is loaded, it continues."""
    sampler = make_sampler("online")
    batches = is_kernels.ImportanceBatchSampler(sampler)
    it = iter(batches)
    next(it), next(it)
    state, sampler_state = batches.state_dict(), sampler.state_dict()
    rest = list(it)
    fresh = make_sampler("online")
    resumed = is_kernels.ImportanceBatchSampler(fresh)
    resumed.load_state_dict(state)
    before = resumed.state_dict()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the sampler's state does not continue"):
            list(resumed)
        assert resumed.state_dict() == before
    fresh.load_state_dict(sampler_state)
    assert list(resumed) == rest


def test_batch_sampler_state_checks():
    s = is_kernels.ImportanceBatchSampler(make_sampler("uniform"))
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        s.load_state_dict(None)
    with pytest.raises(ValueError, match="state_dict lacks 'serial'"):
        s.load_state_dict({"length": 3, "yielded": 1})
    with pytest.raises(ValueError, match=r"state_dict\['yielded'\] must be an int in \[0, 3\]"):
        s.load_state_dict({"length": 3, "yielded": 4, "serial": 4})
