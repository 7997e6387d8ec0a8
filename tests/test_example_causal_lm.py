"""Smoke test of examples/causal_lm_online_is.py on a tiny configuration."""
import importlib.util
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, os.pardir, "examples", "causal_lm_online_is.py")


def load_example():
    spec = importlib.util.spec_from_file_location("causal_lm_online_is", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_learns_with_both_methods():
    example = load_example()
    vocab = 256
    results = example.main(["--vocab", str(vocab), "--topics", "4", "--seq-len", "8",
                            "--train-sequences", "64", "--test-sequences", "32",
                            "--d-model", "32", "--layers", "1", "--heads", "2",
                            "--batch-size", "8", "--steps", "40", "--lr", "1e-2",
                            "--no-progress"])
    assert set(results) == {"uniform", "online_is"}
    for r in results.values():
        # Uniform guessing costs log(vocab); the bigram chain is learnable well below it.
        assert math.isfinite(r["test_loss"]) and r["test_loss"] < math.log(vocab) - 1.0


def test_corpus_follows_its_topics():
    example = load_example()
    cfg = example.Config(vocab=64, topics=4, seq_len=10, train_sequences=50,
                         test_sequences=10)
    train, test = example.make_corpus(cfg, torch.Generator().manual_seed(0))
    assert train.shape == (50, 11) and test.shape == (10, 11)
    topic = torch.cat([train, test]) // (64 // 4)
    assert (topic == topic[:, :1]).all()  # a sequence stays in its topic
