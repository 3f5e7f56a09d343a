"""The SDPA varlen fallback equals the eager reference, forward and backward, with and without ALiBi."""

import pytest
import torch

from megabert.ops.alibi import alibi_slopes
from megabert.ops.attention import resolve_backend, varlen_attention, varlen_attention_reference


def _varlen_qkv(lengths, heads=3, head_dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, generator=gen, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return q, k, v, cu, max(lengths)


@pytest.mark.parametrize("use_alibi", [True, False])
@pytest.mark.parametrize("lengths", [[1], [7, 1, 13], [5, 5]])
def test_sdpa_matches_reference_forward_and_backward(lengths, use_alibi):
    q, k, v, cu, max_len = _varlen_qkv(lengths)
    slopes = alibi_slopes(q.shape[1]) if use_alibi else None
    ref = varlen_attention_reference(q, k, v, cu, max_len, slopes)
    got = varlen_attention(q, k, v, cu, max_len, slopes, backend="sdpa")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sequences_do_not_attend_across_boundaries():
    q, k, v, cu, max_len = _varlen_qkv([4, 6])
    out = varlen_attention(q, k, v, cu, max_len, alibi_slopes(3), backend="sdpa")
    alone = varlen_attention(q[:4], k[:4], v[:4], cu[:2], 4, alibi_slopes(3), backend="sdpa")
    torch.testing.assert_close(out[:4], alone, atol=1e-6, rtol=1e-6)


def test_auto_backend_falls_back_to_sdpa_on_cpu():
    q, *_ = _varlen_qkv([3])
    assert resolve_backend("auto", q) == "sdpa"


def test_unknown_backend_is_a_clear_error():
    q, *_ = _varlen_qkv([3])
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cudnn", q)
