"""ALiBi slopes and biases against hand-written values (Press et al., symmetric distance)."""

import pytest
import torch

from megabert.ops.alibi import alibi_bias, alibi_slopes


def test_slopes_for_8_heads_are_powers_of_one_half():
    expected = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256])
    torch.testing.assert_close(alibi_slopes(8), expected)


def test_slopes_for_12_heads_interleave_the_16_head_series():
    # 8 slopes of the 8-head series, then every other slope of the 16-head series (2^-0.5, 2^-1.5, ...).
    expected = torch.tensor([2.0 ** -k for k in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5])
    torch.testing.assert_close(alibi_slopes(12), expected)


@pytest.mark.parametrize("heads", [8, 12])
def test_bias_is_minus_slope_times_distance(heads):
    slopes = alibi_slopes(heads)
    bias = alibi_bias(slopes, 3)
    assert bias.shape == (heads, 3, 3)
    distance = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    for h in range(heads):
        torch.testing.assert_close(bias[h], -slopes[h] * distance)
    # Head 0 of 8 heads by hand: slope 1/2.
    if heads == 8:
        torch.testing.assert_close(bias[0], torch.tensor([[0.0, -0.5, -1.0], [-0.5, 0.0, -0.5], [-1.0, -0.5, 0.0]]))


def test_slopes_reject_zero_heads():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
