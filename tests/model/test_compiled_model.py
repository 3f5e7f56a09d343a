"""The whole masked-LM forward + loss as one graph (fullgraph) equals the eager model, batch after batch of different
lengths, without recompiling; dropout still changes from step to step; on a GPU (Inductor, bf16), 50 training steps
stay within bf16 tolerance of eager."""

import copy

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.compile import compile_model, is_compiled
from megabert.model.inputs import prepare_inputs
from tests.model.helpers import plain_bert_config, ragged_batch, tiny_config

# lengths of 4 sequences in a [4, 16] batch: T, M and max_seqlen all change from batch to batch. The first batch
# has no padding: its T (64) equals other sizes of the first trace (B * S, the offset of attention_mask in the
# packed buffer), which duck shaping would turn into a guard that the next batch fails.
LENGTHS = [[16, 16, 16, 16], [12, 7, 16, 3], [5, 5, 9, 2], [1, 11, 4, 8]]


def _batch(lengths, seed, seq_len=16, vocab=128):
    ids, mask, labels = ragged_batch(lengths, seq_len=seq_len, vocab=vocab, seed=seed)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, inputs, mlm_output):
    model.zero_grad()
    out = model(**inputs, mlm_output=mlm_output)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compiled_copy(model, cfg):
    torch._dynamo.reset()
    compiled = MosaicBertForMaskedLM(cfg)
    compiled.load_state_dict(model.state_dict())
    return compile_model(compiled, backend="aot_eager")


def _graphs() -> int:
    """Graphs compiled for the model's forward since the last reset: every recompilation adds one."""
    return len(_debug_get_cache_entry_list(MosaicBertForMaskedLM.forward.__code__))


def test_compiled_matches_eager_over_batches_of_different_lengths_in_one_graph_per_output():
    torch.manual_seed(0)
    cfg = tiny_config()
    eager = MosaicBertForMaskedLM(cfg)
    compiled = _compiled_copy(eager, cfg)
    assert is_compiled(compiled) and not is_compiled(eager)
    for seed, lengths in enumerate(LENGTHS):
        inputs = prepare_inputs(_batch(lengths, seed), cfg, "cpu")
        for mlm_output in ("loss", "logits") if seed < 2 else ("loss",):
            ref_loss, ref_grads = _loss_and_grads(eager, inputs, mlm_output)
            loss, grads = _loss_and_grads(compiled, inputs, mlm_output)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
            assert grads.keys() == ref_grads.keys()
            for name, grad in ref_grads.items():
                torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"{mlm_output} {name}")
    assert _graphs() == 2  # fullgraph and dynamic: one graph per mlm_output for every T, M and max_seqlen


def test_compiled_dropout_changes_from_step_to_step():
    torch.manual_seed(0)
    cfg = tiny_config(hidden_dropout=0.1)
    compiled = _compiled_copy(MosaicBertForMaskedLM(cfg), cfg)
    inputs = prepare_inputs(_batch(LENGTHS[0], 0), cfg, "cpu")
    losses = [compiled(**inputs, mlm_output="loss").loss.item() for _ in range(3)]
    assert len(set(losses)) == 3  # the same batch and weights: only the masks differ (aot_eager is deterministic)


def test_compile_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("MEGABERT_COMPILE", "0")
    model = MosaicBertForMaskedLM(tiny_config())
    assert compile_model(model) is model and not is_compiled(model)


def _train(model, batches, cfg, device, steps, bf16):
    """`steps` steps of torch's fused AdamW (on CUDA) over `batches` in turn: the loss per step, w_n - w_0."""
    initial = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    losses = []
    for i in range(steps):
        inputs = prepare_inputs(batches[i % len(batches)], cfg, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs, mlm_output="loss").loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    change = torch.cat([(p.detach().float() - p0.float()).flatten() for p, p0 in zip(model.parameters(), initial)])
    return losses, change


@pytest.mark.gpu
def test_gpu_compiled_training_stays_within_bf16_tolerance_of_eager():
    """Inductor, bf16 autocast, fused AdamW, 50 steps over batches of varying lengths, dropout 0, from the same
    weights as eager. Against an eager fp32 run (TF32 off), the compiled run's loss curve (mean relative error over
    the steps) and weight change are within 2x eager bf16's own errors, or a floor: the criterion of
    benchmarks/compiled_step.py's trajectory check."""
    from benchmarks.compiled_step import trajectory_errors, within_bf16_tolerance

    device, steps = torch.device("cuda"), 50
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=512, hidden_size=128, num_heads=2, intermediate_size=256, attention_backend="auto")
    template = MosaicBertForMaskedLM(cfg).to(device).train()
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(torch.randint(1, 65, (8,), generator=gen).tolist(), seed, seq_len=64, vocab=512)
               for seed in range(8)]  # T, M and max_seqlen differ in every batch
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        reference = _train(copy.deepcopy(template), batches, cfg, device, steps, bf16=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    eager = _train(copy.deepcopy(template), batches, cfg, device, steps, bf16=True)
    torch._dynamo.reset()
    compiled = _train(compile_model(copy.deepcopy(template)), batches, cfg, device, steps, bf16=True)
    eager_errors, compiled_errors = trajectory_errors(eager, reference), trajectory_errors(compiled, reference)
    assert within_bf16_tolerance(compiled_errors, eager_errors), (compiled_errors, eager_errors)


@pytest.mark.parametrize("switch_off", ["position_embedding", "mlp_type", "unpad", "low_precision_layernorm",
                                        "sparse_mlm_head", "all"])
def test_every_ablation_variant_compiles_to_the_eager_loss(switch_off):
    """The trainer compiles by default on a GPU, also for a study's BERT baseline and ablation runs: each model
    with a MosaicBERT switch off (and all of them off) traces as one graph with the eager model's loss."""
    off = plain_bert_config()
    cfg = off if switch_off == "all" else tiny_config(**{switch_off: getattr(off, switch_off)})
    torch.manual_seed(0)
    eager = MosaicBertForMaskedLM(cfg)
    compiled = _compiled_copy(eager, cfg)
    for seed, lengths in enumerate(LENGTHS[:2]):
        inputs = prepare_inputs(_batch(lengths, seed), cfg, "cpu")
        torch.testing.assert_close(_loss_and_grads(compiled, inputs, "loss")[0],
                                   _loss_and_grads(eager, inputs, "loss")[0], rtol=1e-5, atol=1e-6)
    assert _graphs() == 1
