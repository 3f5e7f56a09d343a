"""The whole masked-LM forward + loss as one graph (fullgraph) equals the eager model, batch after batch of different
lengths, without recompiling; dropout still changes from step to step."""

import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.compile import compile_model, is_compiled
from megabert.model.inputs import prepare_inputs
from tests.model.helpers import ragged_batch, tiny_config

# lengths of 4 sequences in a [4, 16] batch: T, M and max_seqlen all change from batch to batch. The first batch
# has no padding: its T (64) equals other sizes of the first trace (B * S, the offset of attention_mask in the
# packed buffer), which duck shaping would turn into a guard that the next batch fails.
LENGTHS = [[16, 16, 16, 16], [12, 7, 16, 3], [5, 5, 9, 2], [1, 11, 4, 8]]


def _batch(lengths, seed):
    ids, mask, labels = ragged_batch(lengths, seq_len=16, seed=seed)
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
