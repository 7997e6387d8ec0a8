"""sequence_scores against the norm of the gradient of each sequence's mean token loss."""
import pytest
import torch
import torch.nn.functional as F

import is_kernels


def test_is_the_output_gradient_norm_of_the_mean_token_loss():
    """Reference: autograd of Σ_i L_i, L_i the mean cross-entropy over sequence i's counted
    tokens, with respect to all logits; per sequence the norm of its part."""
    g = torch.Generator().manual_seed(0)
    B, T, V = 5, 9, 13
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([9, 1, 0, 4, 7])
    mask = torch.arange(T)[None] < lengths[:, None]
    mask[0, 3] = False  # a hole: an ignored token inside a sequence
    target[~mask] = -100
    z = logits.clone().requires_grad_()
    per_token = F.cross_entropy(z.reshape(-1, V), target.reshape(-1),
                                reduction="none").reshape(B, T)
    seq_loss = per_token.sum(1) / mask.sum(1).clamp(min=1)
    (grad,) = torch.autograd.grad(seq_loss.sum(), z)
    ref = grad.reshape(B, -1).norm(dim=1)
    _, token = is_kernels.cross_entropy_with_score(logits.reshape(-1, V), target.reshape(-1),
                                                   reduction="none")
    token = token.reshape(B, T)
    out = is_kernels.sequence_scores(token, mask)
    assert out.dtype == torch.float32 and out.shape == (B,)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    assert out[2] == 0
    mask[0, 3] = True  # lengths: the first lengths[i] tokens
    token[0, 3] = 0.0
    by_len = is_kernels.sequence_scores(token, lengths)
    expected = (token.double() ** 2 * mask).sum(1).sqrt() / lengths.clamp(min=1)
    torch.testing.assert_close(by_len.double(), expected, rtol=1e-6, atol=0)
    packed = torch.cat([token[i, :lengths[i]] for i in range(B)])
    torch.testing.assert_close(is_kernels.sequence_scores(packed, lengths), by_len)


def test_tiny_scores_do_not_underflow_and_uncounted_tokens_are_not_read():
    s = torch.tensor([[1e-30, 2e-30, float("nan")], [3.0, 4.0, 1e30]])
    out = is_kernels.sequence_scores(s, torch.tensor([2, 2]))
    expected = torch.tensor([5 ** 0.5 * 1e-30 / 2, 2.5])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    s, lengths = torch.rand(4, 6), torch.tensor([6, 3, 0, 1])
    compiled = torch.compile(is_kernels.sequence_scores, fullgraph=True)
    torch.testing.assert_close(compiled(s, lengths), is_kernels.sequence_scores(s, lengths))


@pytest.mark.parametrize("match,scores,m", [
    ("lengths must be in \\[0, 3\\]", torch.rand(2, 3), torch.tensor([1, 4])),
    ("lengths must be in \\[0, 3\\]", torch.rand(2, 3), torch.tensor([-1, 2])),
    ("lengths must have B = 2", torch.rand(2, 3), torch.tensor([1, 2, 3])),
    ("mask must have the shape", torch.rand(2, 3), torch.ones(2, 2, dtype=torch.bool)),
    ("must sum to N = 5", torch.rand(5), torch.tensor([2, 2])),
    ("packed \\[N\\] token_scores take integer lengths", torch.rand(5),
     torch.ones(5, dtype=torch.bool)),
    ("mask_or_lengths must be a bool mask or integer", torch.rand(2, 3), torch.ones(2)),
    ("token_scores must be floating", torch.ones(2, 3, dtype=torch.long), torch.tensor([1, 2])),
    ("token_scores must be \\[B, T\\] or packed", torch.rand(2, 3, 4), torch.tensor([1, 2])),
    ("token_scores must be a torch.Tensor", [0.5], torch.tensor([1])),
])
def test_bad_input(match, scores, m):
    with pytest.raises((ValueError, TypeError), match=match):
        is_kernels.sequence_scores(scores, m)
