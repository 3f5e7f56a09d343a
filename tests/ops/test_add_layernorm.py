"""Fused residual add + LayerNorm vs the eager reference: interpreter on CPU (fp32), bf16 on GPU."""

from __future__ import annotations

import pytest
import torch

from megabert.ops.add_layernorm import add_layernorm, add_layernorm_reference
from tests.ops.accuracy import assert_close_to_reference, rel_error
from tests.ops.interpreter import run_interpreted


def _inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    x, res = ((torch.randn(shape, generator=gen) * 2 + 0.5).to(device, dtype).requires_grad_() for _ in range(2))
    w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(device).requires_grad_()  # fp32 parameters, as in a model
    b = (0.1 * torch.randn(hidden, generator=gen)).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    return x, res, w, b, grad


def _fwd_bwd(fn, x, res, w, b, grad):
    y = fn(x, res, w, b, 1e-12)
    return (y, *torch.autograd.grad(y, (x, res, w, b), grad))


def check_matches_reference(shapes: list[list[int]]) -> None:
    """In one interpreter subprocess: y, dx, dresidual, dweight, dbias vs the reference (fp32), per shape."""
    from megabert.ops import add_layernorm as op

    for shape in shapes:
        inputs = _inputs(shape)
        ours = _fwd_bwd(op.add_layernorm, *inputs)
        compiled = _fwd_bwd(torch.compile(op.add_layernorm, backend="aot_eager", fullgraph=True), *inputs)
        ref = _fwd_bwd(add_layernorm_reference, *inputs)
        for name, a, c, r in zip(("y", "dx", "dres", "dw", "db"), ours, compiled, ref):
            assert rel_error(a, r) < 1e-5, f"{name} {shape}: {rel_error(a, r):.2e}"
            assert rel_error(c, r) < 1e-5, f"{name} {shape} (compiled): {rel_error(c, r):.2e}"


def assert_independent_masks(keep: torch.Tensor, p: float) -> None:
    """Dropout decisions are independent: the quarters of a row, and neighbouring rows, agree only as often as
    independent masks do (p^2 + (1-p)^2). A kernel that shared one random draw among several elements (four per
    Philox call, say) would make them agree always."""
    independent = p * p + (1 - p) * (1 - p)
    quarter = keep.shape[1] // 4
    pieces = [keep[:, k * quarter:(k + 1) * quarter] for k in range(4)]
    pairs = [(pieces[a], pieces[b]) for a in range(4) for b in range(a + 1, 4)] + [(keep[:-1], keep[1:])]
    for a, b in pairs:
        agreement = (a == b).float().mean().item()
        assert agreement < independent + 0.15, \
            f"masks agree on {agreement:.2f} of elements (independent: {independent:.2f})"


def check_dropout(shape: list[int], p: float, device: str = "cpu") -> None:
    """The mask the kernel used, read off dx, explains y and the gradients; the drop rate; seeding."""
    from megabert.ops import add_layernorm as op

    x, res, w, b, grad = _inputs(shape, device=device)
    torch.manual_seed(5)
    y, dx, dres, dw, db = _fwd_bwd(lambda *a: op.add_layernorm(*a, dropout_p=p), x, res, w, b, grad)
    keep = dx != 0  # dres is nonzero almost everywhere, so a zero dx marks a dropped element
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05, keep.float().mean()
    assert_independent_masks(keep.reshape(-1, shape[-1]), p)
    dropped = (x * keep / (1 - p)).detach().requires_grad_()
    ref = _fwd_bwd(add_layernorm_reference, dropped, res, w, b, grad)
    assert rel_error(y, ref[0]) < 1e-5
    assert rel_error(dres, ref[2]) < 1e-5 and rel_error(dw, ref[3]) < 1e-5 and rel_error(db, ref[4]) < 1e-5
    assert rel_error(dx, ref[1] * keep / (1 - p)) < 1e-5  # chain rule through the kept, rescaled elements
    torch.manual_seed(5)
    again = op.add_layernorm(x, res, w, b, 1e-12, dropout_p=p)
    torch.manual_seed(6)
    other = op.add_layernorm(x, res, w, b, 1e-12, dropout_p=p)
    assert torch.equal(again, y) and not torch.equal(other, y)


def check_compiled_kernel_choice(shape: list[int], p: float) -> None:
    """Inside torch.compile the reference formula is traced whatever MEGABERT_COMPILE_TRITON_OPS says (Inductor
    fuses it; the kernel never runs there): the mask it used (read off dx) explains y and the gradients, its draws
    are independent, and it differs from call to call."""
    import os

    from megabert.ops import add_layernorm as op

    x, res, w, b, grad = _inputs(shape)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    for flag in (None, "0", "1"):
        os.environ.pop("MEGABERT_COMPILE_TRITON_OPS", None)
        if flag is not None:
            os.environ["MEGABERT_COMPILE_TRITON_OPS"] = flag
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: op.add_layernorm(*a, dropout_p=p), backend=backend, fullgraph=True)
        y, dx, dres, dw, db = _fwd_bwd(compiled, x, res, w, b, grad)
        assert "layer_norm" in graphs[-1] and ("dropout" in graphs[-1]) == (p > 0), (flag, graphs[-1])
        keep = dx != 0
        assert abs(keep.float().mean().item() - (1 - p)) < 0.05, keep.float().mean()
        dropped = (x * keep / (1 - p)).detach().requires_grad_()
        ref = _fwd_bwd(add_layernorm_reference, dropped, res, w, b, grad)
        assert rel_error(y, ref[0]) < 1e-5 and rel_error(dres, ref[2]) < 1e-5
        assert rel_error(dw, ref[3]) < 1e-5 and rel_error(db, ref[4]) < 1e-5
        assert rel_error(dx, ref[1] * keep / (1 - p)) < 1e-5
        if p > 0:
            assert_independent_masks(keep.reshape(-1, shape[-1]), p)
            assert not torch.equal(compiled(x, res, w, b, 1e-12), y)  # a fresh mask per call


@pytest.mark.parametrize("p", [0.25, 0.0])
def test_interpreted_compiled_op_traces_the_reference_with_fresh_independent_masks(p):
    run_interpreted(__name__, "check_compiled_kernel_choice", shape=[33, 100], p=p)


def test_interpreted_fused_dropout_is_consistent_between_forward_and_backward():
    run_interpreted(__name__, "check_dropout", shape=[33, 100], p=0.25)


def test_interpreted_kernel_matches_reference_on_odd_shapes():
    # one row; rows not divisible by the programs; odd hidden sizes (masked lanes)
    run_interpreted(__name__, "check_matches_reference", shapes=[[1, 8], [7, 3, 96], [33, 100]])


def test_cpu_falls_back_to_eager_reference():
    x, res, w, b, _ = _inputs([3, 16])
    torch.testing.assert_close(add_layernorm(x, res, w, b, 1e-5),
                               torch.nn.functional.layer_norm(x + res, (16,), w, b, 1e-5))


def test_cpu_dropout_falls_back_to_eager_and_rejects_bad_rates():
    x, res, w, b, _ = _inputs([64, 16])
    y = add_layernorm(x, res, w, b, 1e-5, dropout_p=0.5)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="dropout_p"):
        add_layernorm(x, res, w, b, 1e-5, dropout_p=1.0)


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one shape and dtype"):
        add_layernorm(torch.zeros(2, 4), torch.zeros(2, 5), torch.ones(4), torch.zeros(4), 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 768), (4097, 768), (1000, 1024), (3, 1000)])
def test_gpu_bf16_matches_fp32_reference(shape):
    inputs = _inputs(shape, torch.bfloat16, "cuda")
    ours = _fwd_bwd(add_layernorm, *inputs)
    lowp = _fwd_bwd(add_layernorm_reference, *inputs)
    x, res, w, b, grad = inputs
    ref32 = [t.detach().float().requires_grad_() for t in (x, res)]
    ref = _fwd_bwd(add_layernorm_reference, *ref32, w, b, grad.float())
    for name, a, lp, r in zip(("y", "dx", "dres", "dw", "db"), ours, lowp, ref):
        assert_close_to_reference(f"add_layernorm {name} {shape}", a, lp, r)


@pytest.mark.gpu
def test_gpu_fused_dropout_is_consistent_between_forward_and_backward():
    check_dropout([1000, 768], 0.1, device="cuda")
