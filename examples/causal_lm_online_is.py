"""A small causal language model trained with online importance sampling over sequences.

The corpus is synthetic (nothing is downloaded): a vocabulary of 8192 tokens split into
topics of equal size; a sequence picks one topic (topic k with probability ∝ 1/(k+1), so
some topics are rare) and walks its bigram chain, where each token has two successors
(probability 0.8 / 0.2) inside the topic. The model is a tiny pre-norm transformer; its
output layer and loss are one call to :func:`is_kernels.linear_cross_entropy_with_score`
(no [tokens, vocabulary] logits), whose token scores :func:`is_kernels.sequence_scores`
turns into one score per sequence for :class:`is_kernels.OnlineImportanceSampler`.

Both methods (uniform sampling and online IS, unbiased weights) train from the same
initialisation for the same number of steps; the script prints the held-out mean token loss
of each. Run: ``python examples/causal_lm_online_is.py`` (``--help`` for the sizes; the
defaults train 300 steps of 16 sequences of 32 tokens per method, about 1.1 M parameters).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Dict, Tuple

import torch
from torch import nn
from tqdm import tqdm

import is_kernels


@dataclasses.dataclass
class Config:
    vocab: int = 8192
    topics: int = 16
    seq_len: int = 32
    train_sequences: int = 1024
    test_sequences: int = 256
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    batch_size: int = 16
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0
    progress: bool = True


def make_corpus(cfg: Config, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Train and test token sequences ``[n, seq_len + 1]`` (int64) of the bigram topics."""
    if cfg.vocab % cfg.topics:
        raise ValueError(f"vocab ({cfg.vocab}) must be a multiple of topics ({cfg.topics})")
    size = cfg.vocab // cfg.topics
    # Two successors per token, inside its topic block.
    local = torch.arange(cfg.vocab) % size
    block = torch.arange(cfg.vocab) - local
    succ = block[:, None] + torch.randint(0, size, (cfg.vocab, 2), generator=generator)
    topic_p = 1.0 / torch.arange(1, cfg.topics + 1, dtype=torch.float64)
    n = cfg.train_sequences + cfg.test_sequences
    topic = torch.multinomial(topic_p / topic_p.sum(), n, replacement=True,
                              generator=generator)
    tokens = torch.empty(n, cfg.seq_len + 1, dtype=torch.int64)
    tokens[:, 0] = topic * size + torch.randint(0, size, (n,), generator=generator)
    for t in range(1, cfg.seq_len + 1):
        second = torch.rand(n, generator=generator) < 0.2
        tokens[:, t] = succ[tokens[:, t - 1], second.long()]
    return tokens[:cfg.train_sequences], tokens[cfg.train_sequences:]


class TinyLM(nn.Module):
    """Token + position embeddings, pre-norm causal transformer layers, a linear head."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(cfg.seq_len, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 2 * cfg.d_model,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last hidden states ``[B, T, d_model]`` (the head's input)."""
        T = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.layers(self.embed(tokens) + self.pos[:T], mask=mask, is_causal=True)
        return self.norm(h)

    def token_losses(self, seqs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss and score ``[B, T]`` of next-token prediction on ``seqs``
        ``[B, T + 1]``, without materialising the logits."""
        return is_kernels.linear_cross_entropy_with_score(
            self.hidden(seqs[:, :-1]), self.head.weight, seqs[:, 1:], reduction="none")


@torch.no_grad()
def evaluate(model: TinyLM, seqs: torch.Tensor, batch: int = 256) -> float:
    """Mean token loss over ``seqs``."""
    total = 0.0
    for start in range(0, seqs.shape[0], batch):
        total += model.token_losses(seqs[start:start + batch])[0].sum().item()
    return total / (seqs.shape[0] * (seqs.shape[1] - 1))


def train(method: str, cfg: Config, train_seqs: torch.Tensor, test_seqs: torch.Tensor,
          init: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Trains a copy of the model from ``init`` with ``method`` ("uniform" or "online_is")."""
    torch.manual_seed(cfg.seed)
    model = TinyLM(cfg)
    model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n = train_seqs.shape[0]
    if method == "online_is":
        sampler = is_kernels.OnlineImportanceSampler(n, cfg.batch_size, generator=gen)
    elif method == "uniform":
        sampler = is_kernels.UniformSampler(n, cfg.batch_size, generator=gen)
    else:
        raise ValueError(f"method must be 'uniform' or 'online_is', got {method!r}")
    start = time.perf_counter()
    for _ in tqdm(range(cfg.steps), desc=method, disable=not cfg.progress):
        idx, weights = sampler.sample()
        token_loss, token_score = model.token_losses(train_seqs[idx])
        seq_loss = token_loss.mean(1)  # every token counts: no padding in this corpus
        lengths = torch.full((idx.shape[0],), token_loss.shape[1])
        sampler.update(idx, is_kernels.sequence_scores(token_score, lengths))
        opt.zero_grad(set_to_none=True)
        (weights * seq_loss).mean().backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"test_loss": evaluate(model, test_seqs), "train_seconds": seconds}


def main(argv=None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Config):
        if field.type == "bool":
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                            default=field.default)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                    if f.type != "bool"}, progress=not args.no_progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_seqs, test_seqs = make_corpus(cfg, gen)
    torch.manual_seed(cfg.seed)
    init = TinyLM(cfg).state_dict()
    results = {}
    for method in ("uniform", "online_is"):
        results[method] = train(method, cfg, train_seqs, test_seqs, init)
        print(f"{method}: held-out token loss {results[method]['test_loss']:.4f} after "
              f"{cfg.steps} steps ({results[method]['train_seconds']:.1f} s)", flush=True)
    return results


if __name__ == "__main__":
    main()
