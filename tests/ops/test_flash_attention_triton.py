"""Triton varlen FlashAttention with ALiBi vs the eager fp32 reference: interpreter on CPU, bf16/fp16 on GPU."""

from __future__ import annotations

import pytest
import torch

from megabert.ops.alibi import alibi_slopes
from megabert.ops.attention import resolve_backend, varlen_attention_reference, varlen_attention_sdpa
from tests.ops.accuracy import assert_close_to_reference, rel_error
from tests.ops.interpreter import run_interpreted


def make_inputs(lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype, device: str,
                fused_qkv: bool = False, seed: int = 0):
    """q, k, v [T, heads, head_dim] (optionally strided views of one [T, 3, heads, head_dim] tensor), cu_seqlens."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    if fused_qkv:
        qkv = torch.randn(total, 3, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
        q, k, v = (x.requires_grad_() for x in qkv.unbind(1))  # strided views, stride(0) = 3 * heads * head_dim
        assert q.stride(0) == 3 * heads * head_dim
    else:
        q, k, v = (torch.randn(total, heads, head_dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
                   for _ in range(3))
    return q, k, v, cu_seqlens


def forward_backward(fn, q, k, v, cu_seqlens, max_seqlen, slopes, grad_out):
    out = fn(q, k, v, cu_seqlens, max_seqlen, slopes)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (out, *grads)


# ----------------------------------------------------------------------------------------------------------------
# CPU: the kernels themselves, run by the Triton interpreter in fp32 (see tests/ops/interpreter.py)
# ----------------------------------------------------------------------------------------------------------------


def check_matches_reference(cases: list[dict]) -> None:
    """Runs inside one interpreter subprocess (each start costs seconds) over several cases."""
    for case in cases:
        if case.pop("packed", False):
            _check_packed(**case)
        else:
            _check_case(**case)


def _packed_vs_reference(packed_fn, lengths, heads, head_dim, dtype, device, alibi=True):
    """d(qkv) from a packed-qkv attention function against the fp32 reference on its unbound slices."""
    gen = torch.Generator().manual_seed(3)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=gen).to(device, dtype).requires_grad_()
    slopes = alibi_slopes(heads).to(device) if alibi else None
    grad_out = torch.randn(sum(lengths), heads, head_dim, generator=gen).to(device, dtype)
    out = packed_fn(qkv, cu, max(lengths), slopes)
    (dqkv,) = torch.autograd.grad(out, qkv, grad_out)
    qkv32 = qkv.detach().float().requires_grad_()
    ref = varlen_attention_reference(*qkv32.unbind(1), cu, max(lengths), slopes)
    (dqkv_ref,) = torch.autograd.grad(ref, qkv32, grad_out.float())
    return out, dqkv, ref, dqkv_ref


def _check_packed(lengths: list[int], heads: int, head_dim: int) -> None:
    from megabert.ops import flash_attention_triton as fa

    out, dqkv, ref, dqkv_ref = _packed_vs_reference(fa.varlen_attention_qkvpacked, lengths, heads, head_dim,
                                                    torch.float32, "cpu")
    assert rel_error(out, ref) < 1e-5 and rel_error(dqkv, dqkv_ref) < 1e-5, (rel_error(out, ref),
                                                                               rel_error(dqkv, dqkv_ref))


def _check_case(lengths: list[int], heads: int, head_dim: int, alibi: bool, fused_qkv: bool = False,
                dtype: str = "float32") -> None:
    """Output and dq, dk, dv of the interpreted kernel against the eager fp32 reference."""
    from megabert.ops import flash_attention_triton as fa

    dt = getattr(torch, dtype)
    q, k, v, cu = make_inputs(lengths, heads, head_dim, dt, "cpu", fused_qkv)
    slopes = alibi_slopes(heads) * 4.0 if alibi else None  # steeper than default, so the bias matters at s < 40
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dt)
    ours = forward_backward(fa.varlen_attention, q, k, v, cu, max(lengths), slopes, grad_out)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = forward_backward(varlen_attention_reference, q32, k32, v32, cu, max(lengths), slopes, grad_out.float())
    # under torch.compile the same launchers run as custom ops with their own autograd registration
    compiled = torch.compile(fa.varlen_attention, backend="aot_eager", fullgraph=True)
    ours_compiled = forward_backward(compiled, q, k, v, cu, max(lengths), slopes, grad_out)
    tol = 1e-5 if dt == torch.float32 else 1e-2  # 16-bit inputs: only the output rounding differs
    for name, a, c, b in zip(("out", "dq", "dk", "dv"), ours, ours_compiled, ref):
        assert a.dtype == dt, f"{name} came back as {a.dtype}, expected {dt}"
        for label, x in (("eager", a), ("compiled", c)):
            err = rel_error(x, b)
            assert err < tol, f"{name} ({label}): relative error {err:.2e} >= {tol} for lengths {lengths}"


def check_compiled_packed_op(cases: list[list[int]]) -> None:
    """The packed form under torch.compile (dynamic shapes): one custom-op node for q, k, v and one graph for every
    token count and max_seqlen; d(qkv) matches the reference."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from megabert.ops import flash_attention_triton as fa

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fa.varlen_attention_qkvpacked, backend=counter, fullgraph=True, dynamic=True)
    for lengths in cases:
        out, dqkv, ref, dqkv_ref = _packed_vs_reference(compiled, lengths, 2, 32, torch.float32, "cpu")
        assert rel_error(out, ref) < 1e-5 and rel_error(dqkv, dqkv_ref) < 1e-5, lengths
    assert counter.frame_count == 1, counter.frame_count
    assert "flash_attn_varlen_qkvpacked_fwd" in str(counter.graphs[0].graph)


def test_interpreted_packed_op_compiles_once_for_any_token_count():
    # batch sizes other than 3: duck sizing would tie cu_seqlens [B + 1] to the 3 of qkv [T, 3, heads, d]
    run_interpreted(__name__, "check_compiled_packed_op", cases=[[3, 18, 5, 7], [9, 1, 20, 4, 6, 2], [16, 16, 16, 1]])


def test_interpreted_kernel_matches_reference_fwd_and_grads():
    run_interpreted(__name__, "check_matches_reference", cases=[
        dict(lengths=[1, 7, 33], heads=2, head_dim=32, alibi=True),  # odd lengths, length 1, several blocks
        dict(lengths=[17, 1, 5], heads=2, head_dim=64, alibi=False),  # no ALiBi
        dict(lengths=[40], heads=1, head_dim=128, alibi=True),  # head_dim 128
    ])


def test_interpreted_kernel_accepts_strided_fused_qkv_views_and_bf16():
    run_interpreted(__name__, "check_matches_reference", cases=[
        dict(lengths=[9, 20], heads=2, head_dim=32, alibi=True, fused_qkv=True, dtype="bfloat16"),
        dict(lengths=[3, 18], heads=2, head_dim=32, packed=True),  # qkv [T, 3, heads, d] in, d(qkv) out
    ])


def test_rejects_unsupported_head_dim():
    from megabert.ops import flash_attention_triton as fa

    q = torch.zeros(4, 2, 48)
    with pytest.raises(ValueError, match="head_dim 48"):
        fa.varlen_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4)
    assert not fa.is_available(q)


def test_rejects_batches_past_32bit_offsets():
    from megabert.ops import flash_attention_triton as fa

    huge = torch.empty(2 ** 31 // (3 * 8 * 32) + 1, 8, 32, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ValueError, match="32-bit"):
        fa._prepare((huge, huge, huge))


def test_auto_backend_on_cpu_is_sdpa():
    assert resolve_backend("auto", torch.zeros(2, 2, 64)) == "sdpa"


@pytest.mark.parametrize("capability, fused", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_backend_takes_the_triton_kernel_only_on_gpus_with_tensor_core_dots(monkeypatch, capability, fused):
    # Triton runs tl.dot on FMA units below compute capability 8.0 (V100, T4): SDPA is taken there. A stand-in
    # for a CUDA bf16 tensor, the device's capability patched: no GPU needed.
    from types import SimpleNamespace

    from megabert.ops import flash_attention_triton as fa

    if fa.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fa, "_capabilities", {})  # asked once per device: a fresh cache for the patched device
    example = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(5, 4, 64), device=torch.device("cuda", 0))
    assert fa.is_available(example) is fused
    assert fa.runs_fast_on(capability) is fused
    if not fused:
        with pytest.raises(RuntimeError, match="does the GPU meet its needs"):
            resolve_backend("triton", example)

    # The model resolves its backend inside torch.compile's trace (fullgraph): the capability is a constant there.
    def choose(x):
        return x * 2 if fa.runs_fast_on(fa.device_capability(0)) else x + 1

    torch._dynamo.reset()  # a fresh trace: the capability is read when tracing
    try:
        compiled = torch.compile(choose, fullgraph=True, backend="eager")
        assert compiled(torch.zeros(2)).tolist() == ([0.0, 0.0] if fused else [1.0, 1.0])
    finally:
        torch._dynamo.reset()


def test_flash_attn_backend_is_unavailable_without_the_package_or_gpu():
    from megabert.ops import flash_attn_backend

    assert not flash_attn_backend.is_available(torch.zeros(2, 2, 64, dtype=torch.bfloat16))


# ----------------------------------------------------------------------------------------------------------------
# GPU: bf16 / fp16, judged by error vs fp32 relative to PyTorch's own low-precision error
# ----------------------------------------------------------------------------------------------------------------


def _gpu_case(lengths, heads, head_dim, dtype, alibi, backend_fn, fused_qkv=False):
    q, k, v, cu = make_inputs(lengths, heads, head_dim, dtype, "cuda", fused_qkv)
    slopes = alibi_slopes(heads).cuda() if alibi else None
    grad_out = torch.randn(q.shape, device="cuda", dtype=dtype)
    max_len = max(lengths)
    ours = forward_backward(backend_fn, q, k, v, cu, max_len, slopes, grad_out)
    lowp = forward_backward(varlen_attention_sdpa, q, k, v, cu, max_len, slopes, grad_out)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = forward_backward(varlen_attention_sdpa, q32, k32, v32, cu, max_len, slopes, grad_out.float())
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, lowp, ref):
        assert_close_to_reference(f"{name} {lengths} d={head_dim} {dtype}", a, b, r)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim,dtype", [(32, torch.bfloat16), (64, torch.bfloat16), (128, torch.bfloat16),
                                            (64, torch.float16)])
@pytest.mark.parametrize("alibi", [True, False])
def test_gpu_triton_matches_fp32_reference(head_dim, dtype, alibi):
    from megabert.ops import flash_attention_triton as fa

    _gpu_case([1, 7, 129, 513, 64, 300], 4, head_dim, dtype, alibi, fa.varlen_attention)


@pytest.mark.gpu
def test_gpu_triton_fused_qkv_views():
    from megabert.ops import flash_attention_triton as fa

    _gpu_case([5, 128, 77], 12, 64, torch.bfloat16, True, fa.varlen_attention, fused_qkv=True)


@pytest.mark.gpu
def test_gpu_triton_qkvpacked_matches_reference():
    from megabert.ops import flash_attention_triton as fa

    out, dqkv, ref, dqkv_ref = _packed_vs_reference(fa.varlen_attention_qkvpacked, [1, 7, 129, 513], 12, 64,
                                                    torch.bfloat16, "cuda")
    assert rel_error(out, ref) < 1e-2 and rel_error(dqkv, dqkv_ref) < 1e-2, (rel_error(out, ref),
                                                                             rel_error(dqkv, dqkv_ref))


@pytest.mark.gpu
def test_gpu_triton_long_sequence_8192():
    from megabert.ops import flash_attention_triton as fa

    _gpu_case([8192, 1000], 2, 64, torch.bfloat16, True, fa.varlen_attention)


@pytest.mark.gpu
def test_gpu_flash_attn_backend_matches_reference():
    from megabert.ops import flash_attn_backend

    if flash_attn_backend.flash_attn_varlen_func is None:
        pytest.skip("flash-attn is not installed")
    _gpu_case([1, 7, 129, 513], 4, 64, torch.bfloat16, True, flash_attn_backend.varlen_attention)


@pytest.mark.gpu
def test_gpu_auto_backend_picks_a_fused_kernel():
    assert resolve_backend("auto", torch.zeros(2, 2, 64, device="cuda", dtype=torch.bfloat16)) in (
        "flash_attn", "triton")
