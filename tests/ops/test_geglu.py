"""Fused GeGLU vs the eager reference: interpreter on CPU (fp32), bf16 on GPU, compile-friendliness."""

from __future__ import annotations

import pytest
import torch

from megabert.ops.geglu import geglu, geglu_reference
from tests.ops.accuracy import assert_close_to_reference, rel_error
from tests.ops.interpreter import run_interpreted


def check_matches_reference(shapes: list[list[int]]) -> None:
    """In the interpreter subprocess (one per test file: starting one costs seconds): forward and input gradient
    of the kernel vs the reference (fp32), and the same under torch.compile."""
    from megabert.ops import geglu as op

    assert op.is_available(torch.zeros(1)), "TRITON_INTERPRET should enable the kernel on CPU"
    for shape in shapes:
        _check_shape(op, shape)


def _check_shape(op, shape: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).requires_grad_()
    grad_out = torch.randn(*shape[:-1], shape[-1] // 2, generator=gen)
    out = op.geglu(x)
    (dx,) = torch.autograd.grad(out, x, grad_out)
    ref = geglu_reference(x)
    (dx_ref,) = torch.autograd.grad(ref, x, grad_out)
    assert rel_error(out, ref) < 1e-6 and rel_error(dx, dx_ref) < 1e-6, (rel_error(out, ref), rel_error(dx, dx_ref))
    compiled = torch.compile(op.geglu, backend="aot_eager", fullgraph=True)  # custom op traces as one node
    (dx_c,) = torch.autograd.grad(compiled(x), x, grad_out)
    assert rel_error(dx_c, dx_ref) < 1e-6


def check_compiled_kernel_choice(shape: list[int]) -> None:
    """Inside torch.compile the kernel's custom op is traced by default and with MEGABERT_COMPILE_TRITON_OPS=1, the
    reference formula (which Inductor fuses) with 0; both give the reference's output and gradient."""
    import os

    from megabert.ops import geglu as op

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    x = torch.randn(shape).requires_grad_()
    grad_out = torch.randn(*shape[:-1], shape[-1] // 2)
    (dx_ref,) = torch.autograd.grad(geglu_reference(x), x, grad_out)
    for flag, kernel in ((None, True), ("0", False), ("1", True)):
        os.environ.pop("MEGABERT_COMPILE_TRITON_OPS", None)
        if flag is not None:
            os.environ["MEGABERT_COMPILE_TRITON_OPS"] = flag
        torch._dynamo.reset()
        out = torch.compile(op.geglu, backend=backend, fullgraph=True)(x)
        (dx,) = torch.autograd.grad(out, x, grad_out)
        assert ("geglu_fwd" in graphs[-1]) == kernel, (flag, graphs[-1])
        assert rel_error(out, geglu_reference(x)) < 1e-6 and rel_error(dx, dx_ref) < 1e-6


def test_interpreted_compiled_op_is_the_reference_or_the_kernel():
    run_interpreted(__name__, "check_compiled_kernel_choice", shape=[7, 66])


def test_interpreted_kernel_matches_reference_on_odd_shapes():
    # a single element pair, odd rows and inner sizes, more than one block of 1024
    run_interpreted(__name__, "check_matches_reference", shapes=[[1, 2], [7, 3, 66], [5, 2050]])


def test_cpu_falls_back_to_eager_reference():
    x = torch.randn(4, 10)
    torch.testing.assert_close(geglu(x), torch.nn.functional.gelu(x[:, :5]) * x[:, 5:])


def test_compile_kernel_choice_rejects_other_values_naming_them(monkeypatch):
    from megabert.ops import compiled_geglu_kernel

    monkeypatch.setenv("MEGABERT_COMPILE_TRITON_OPS", "geglu")
    with pytest.raises(ValueError, match="MEGABERT_COMPILE_TRITON_OPS is 'geglu'"):
        compiled_geglu_kernel()
    monkeypatch.setenv("MEGABERT_COMPILE_TRITON_OPS", " 0 ")
    assert compiled_geglu_kernel() is False


def test_rejects_odd_last_dim():
    with pytest.raises(ValueError, match="even last dim"):
        geglu(torch.zeros(3, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 2), (4097, 2 * 3072), (129, 2 * 4096)])
def test_gpu_bf16_matches_fp32_reference(shape):
    x = torch.randn(shape, device="cuda").mul(2).bfloat16().requires_grad_()
    grad_out = torch.randn(shape[0], shape[1] // 2, device="cuda", dtype=torch.bfloat16)
    ours = (geglu(x), *torch.autograd.grad(geglu(x), x, grad_out))
    lowp = (geglu_reference(x), *torch.autograd.grad(geglu_reference(x), x, grad_out))
    x32 = x.detach().float().requires_grad_()
    ref = (geglu_reference(x32), *torch.autograd.grad(geglu_reference(x32), x32, grad_out.float()))
    for name, a, b, r in zip(("out", "dx"), ours, lowp, ref):
        assert_close_to_reference(f"geglu {name} {shape}", a, b, r)
