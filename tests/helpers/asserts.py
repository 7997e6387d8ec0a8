"""Comparison of a result with a float64 reference, NaN positions included."""
import torch


def assert_close(actual, expected, tol, what):
    """Max abs error <= tol x max(1, max |expected|), NaN exactly where expected has NaN."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert actual.shape == expected.shape, what
    assert torch.equal(actual.isnan(), expected.isnan()), f"{what}: NaN where not expected"
    actual, expected = actual.nan_to_num(0.0), expected.nan_to_num(0.0)
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1.0)
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} x {scale:.3g}"
