"""Unpadding bookkeeping: the search-based token positions equal the nonzero-based ones and need no sync."""

import pytest
import torch

from megabert.ops.padding import unpad_indices


@pytest.mark.parametrize("lengths", [[1], [7, 1, 13], [5, 0, 5, 0, 0], [0, 3]])
def test_positions_from_the_token_count_equal_the_nonzero_positions(lengths):
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    seq = max(lengths)
    expected = unpad_indices(cu, seq)  # nonzero over the [B, S] grid
    got = unpad_indices(cu, seq, total=sum(lengths))
    assert torch.equal(got, expected)


def test_positions_from_the_token_count_trace_into_one_graph_for_any_count():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda cu, q: unpad_indices(cu, 16, q.shape[0]), backend=counter, fullgraph=True,
                       dynamic=True)
    for lengths in ([3, 16, 2], [9, 9, 1, 4], [16, 16]):
        cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        assert torch.equal(fn(cu, torch.zeros(sum(lengths))), unpad_indices(cu, 16))
    assert counter.frame_count == 1
