"""Fused linear + cross entropy vs F.linear + F.cross_entropy: fp32 on CPU (torch path and the Triton kernel under
the interpreter), under autocast, under torch.compile, and bf16 on the GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megabert.ops.linear_cross_entropy import (cross_entropy_rows, linear_cross_entropy,
                                               linear_cross_entropy_reference)
from tests.ops.accuracy import assert_close_to_reference, rel_error
from tests.ops.interpreter import run_interpreted


def _inputs(rows: int, hidden: int, vocab: int, ignored_every: int = 3, bias: bool = True, device: str = "cpu",
            dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 0.5).to(device).requires_grad_()  # fp32 parameters
    b = (torch.randn(vocab, generator=gen) * 0.1).to(device).requires_grad_() if bias else None
    target = torch.randint(0, vocab, (rows,), generator=gen)
    if ignored_every:
        target[1::ignored_every] = -100
    return x, w, b, target.to(device)


def _loss_and_grads(fn, x, w, b, target):
    loss = fn(x, w, b, target)
    leaves = [t for t in (x, w, b) if t is not None]
    return (loss, *torch.autograd.grad(loss, leaves))


def _fused(chunk_rows: int):
    return lambda x, w, b, t: linear_cross_entropy(x, w, b, t, chunk_rows=chunk_rows)[0]


def _check_against_reference(rows: int, hidden: int, vocab: int, chunk_rows: int, bias: bool = True,
                             tol: float = 1e-5) -> None:
    x, w, b, target = _inputs(rows, hidden, vocab, bias=bias)
    ours = _loss_and_grads(_fused(chunk_rows), x, w, b, target)
    ref = _loss_and_grads(linear_cross_entropy_reference, x, w, b, target)
    for name, a, r in zip(("loss", "dx", "dweight", "dbias"), ours, ref):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert rel_error(a, r) < tol, f"{name} rows={rows} chunk={chunk_rows}: {rel_error(a, r):.2e}"
    with torch.no_grad():
        loss, pred = linear_cross_entropy(x, w, b, target, predictions=True, chunk_rows=chunk_rows)
    assert torch.equal(pred, F.linear(x, w, b).argmax(-1))
    assert rel_error(loss, ref[0]) < tol


@pytest.mark.parametrize("rows,chunk_rows", [(37, 1), (37, 8), (37, 37), (37, 4096), (1, 4096)])
def test_fp32_loss_grads_and_predictions_match_reference_for_any_chunking(rows, chunk_rows):
    _check_against_reference(rows, hidden=16, vocab=101, chunk_rows=chunk_rows)


def test_fp32_without_bias_matches_reference():
    _check_against_reference(20, hidden=8, vocab=64, chunk_rows=6, bias=False)


def test_ignored_rows_get_no_gradient_and_do_not_count_in_the_mean():
    x, w, b, target = _inputs(12, 8, 50, ignored_every=2)
    loss, dx, *_ = _loss_and_grads(_fused(5), x, w, b, target)
    ignored = target == -100
    assert torch.all(dx[ignored] == 0) and torch.all(dx[~ignored].abs().sum(-1) > 0)
    kept = _loss_and_grads(_fused(5), x[~ignored].detach().requires_grad_(), w, b, target[~ignored])[0]
    torch.testing.assert_close(loss, kept, rtol=1e-6, atol=0)


def test_bf16_autocast_matches_the_reference_under_autocast():
    """On CPU under bf16 autocast both compute bf16 logits: the fused loss and grads match the reference there."""
    x, w, b, target = _inputs(64, 32, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _loss_and_grads(_fused(16), x, w, b, target)
        ref = _loss_and_grads(linear_cross_entropy_reference, x, w, b, target)
    for name, a, r in zip(("loss", "dx", "dweight", "dbias"), ours, ref):
        assert a.dtype == r.dtype, f"{name}: {a.dtype} vs {r.dtype}"
        assert rel_error(a, r) < 2e-2, f"{name}: {rel_error(a, r):.2e}"


def test_compiled_fullgraph_matches_and_new_row_counts_do_not_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x, w, b, t: linear_cross_entropy(x, w, b, t, chunk_rows=8)[0],
                             backend=counter, fullgraph=True, dynamic=True)
    for rows in (37, 50, 9):
        x, w, b, target = _inputs(rows, 16, 101, seed=rows)
        ours = _loss_and_grads(compiled, x, w, b, target)
        ref = _loss_and_grads(linear_cross_entropy_reference, x, w, b, target)
        for a, r in zip(ours, ref):
            assert rel_error(a, r) < 1e-5
    assert counter.frame_count == 1


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 6), None, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 4), None, torch.zeros(2, dtype=torch.long))


def check_kernel_matches_reference(cases: list[dict]) -> None:
    """In the interpreter subprocess: the Triton kernel's per-row loss, argmax and in-place logits gradient, and the
    whole op running on it, against torch (fp32)."""
    from megabert.ops import linear_cross_entropy as op

    assert op._kernel_available(torch.zeros(1)), "TRITON_INTERPRET should enable the kernel on CPU"
    for case in cases:
        rows, vocab, block = case["rows"], case["vocab"], case["block"]
        gen = torch.Generator().manual_seed(rows)
        logits = torch.randn(rows, vocab, generator=gen) * 3
        logits[0, 5] = logits[0, 9] = logits[0].max() + 1  # a tie: the first index wins, as in torch.argmax
        target = torch.randint(0, vocab, (rows,), generator=gen)
        target[1::3] = -100
        scale = torch.tensor([1.0 / max(int((target != -100).sum()), 1)])
        work = logits.clone()
        loss, pred = op.cross_entropy_rows(work, target, scale, -100, grad=True, predictions=True, block=block)
        ref_loss = F.cross_entropy(logits, target, ignore_index=-100, reduction="none")
        z = logits.clone().requires_grad_()
        (ref_grad,) = torch.autograd.grad(F.cross_entropy(z, target, ignore_index=-100), z)
        assert rel_error(loss, ref_loss) < 1e-6, rel_error(loss, ref_loss)
        assert rel_error(work, ref_grad) < 1e-6, rel_error(work, ref_grad)
        assert torch.equal(pred, logits.argmax(-1)) and pred[0] == 5
        _check_against_reference(rows, hidden=8, vocab=vocab, chunk_rows=4)


def test_interpreted_kernel_matches_reference_on_odd_shapes():
    # several column blocks with a ragged last one; one block wider than the vocabulary
    run_interpreted(__name__, "check_kernel_matches_reference",
                    cases=[dict(rows=7, vocab=300, block=64), dict(rows=3, vocab=50, block=None)])


def test_cpu_rows_without_a_kernel_match_reference():
    logits = torch.randn(6, 20)
    target = torch.tensor([1, -100, 3, 19, 0, -100])
    work = logits.clone()
    loss, pred = cross_entropy_rows(work, target, torch.tensor([0.25]), -100, grad=True, predictions=True)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, reduction="none"))
    z = logits.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(F.cross_entropy(z, target), z)
    torch.testing.assert_close(work, ref_grad)
    assert torch.equal(pred, logits.argmax(-1))


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 4097, 9000])
def test_gpu_bf16_matches_fp32_reference_with_less_memory(rows):
    x, w, b, target = _inputs(rows, 768, 30528, ignored_every=0, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        ours = _loss_and_grads(_fused(4096), x, w, b, target)
        ours_peak = torch.cuda.max_memory_allocated() - start
        torch.cuda.reset_peak_memory_stats()
        lowp = _loss_and_grads(linear_cross_entropy_reference, x, w, b, target)
        lowp_peak = torch.cuda.max_memory_allocated() - start
    x32 = x.detach().float().requires_grad_()
    ref = _loss_and_grads(linear_cross_entropy_reference, x32, w, b, target)
    for name, a, lp, r in zip(("loss", "dx", "dweight", "dbias"), ours, lowp, ref):
        assert_close_to_reference(f"linear_cross_entropy {name} rows={rows}", a, lp, r)
    if rows > 4096:
        assert ours_peak < 0.5 * lowp_peak, (ours_peak, lowp_peak)
