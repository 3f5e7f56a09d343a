"""The fused MLM loss ('loss', 'predictions') equals the loss from the logits, with the same gradients."""

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM
from tests.model.helpers import ragged_batch, tiny_config


def _loss_and_grads(model, batch, mlm_output):
    model.zero_grad()
    out = model(*batch, mlm_output=mlm_output)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("unpad,sparse", [(True, True), (False, True), (True, False), (False, False)])
def test_fused_loss_and_gradients_equal_those_of_the_logits(unpad, sparse):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(unpad=unpad, sparse_mlm_head=sparse))
    input_ids, attention_mask, labels = ragged_batch([11, 4, 16, 1], seq_len=16, seed=2)
    batch = (input_ids, attention_mask, None, labels)
    reference, ref_grads = _loss_and_grads(model, batch, "logits")
    fused, grads = _loss_and_grads(model, batch, "loss")
    assert fused.logits is None and fused.predictions is None
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-6, atol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("sparse", [True, False])
def test_predictions_are_the_argmax_of_the_logits_on_the_labelled_rows(sparse):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(sparse_mlm_head=sparse)).eval()
    input_ids, attention_mask, labels = ragged_batch([9, 16, 3], seq_len=16, seed=4)
    with torch.no_grad():
        reference = model(input_ids, attention_mask, labels=labels)
        out = model(input_ids, attention_mask, labels=labels, mlm_output="predictions")
    assert out.logits is None
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-6, atol=0)
    selected = out.labels != -100
    expected = reference.logits.argmax(-1)[reference.labels != -100]
    assert torch.equal(out.predictions[selected], expected)
    assert torch.equal(out.labels[selected], labels[labels != -100])


def test_a_replaced_loss_function_gets_the_logits():
    """Tensor parallelism swaps loss_fn for a vocab-parallel one: the fused head cannot serve it, logits can."""
    model = MosaicBertForMaskedLM(tiny_config())
    calls = []
    model.loss_fn = lambda logits, labels: calls.append(logits.shape) or logits.float().logsumexp(-1).mean()
    input_ids, attention_mask, labels = ragged_batch([5, 8], seq_len=8)
    out = model(input_ids, attention_mask, labels=labels, mlm_output="predictions")
    assert calls and out.logits is not None and out.predictions is None
    assert out.logits.shape == (int((labels != -100).sum()), 128)


def test_mlm_output_is_checked():
    model = MosaicBertForMaskedLM(tiny_config())
    input_ids, attention_mask, labels = ragged_batch([5], seq_len=5)
    with pytest.raises(ValueError, match="mlm_output must be one of"):
        model(input_ids, attention_mask, labels=labels, mlm_output="probs")
    with pytest.raises(ValueError, match="needs labels"):
        model(input_ids, attention_mask, mlm_output="loss")
