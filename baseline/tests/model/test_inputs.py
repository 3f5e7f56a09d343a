"""Bookkeeping precomputed on the CPU (prepare_inputs) gives exactly what the model computes for itself."""

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.model.inputs import prepare_inputs
from tests.model.helpers import ragged_batch, tiny_config


@pytest.mark.parametrize("unpad,sparse", [(True, True), (False, True), (True, False)])
def test_prepared_inputs_give_the_same_mlm_loss_and_logits(unpad, sparse):
    torch.manual_seed(0)
    cfg = tiny_config(unpad=unpad, sparse_mlm_head=sparse)
    model = MosaicBertForMaskedLM(cfg).eval()
    input_ids, attention_mask, labels = ragged_batch([11, 4, 16, 1], seq_len=16, seed=2)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "token_type_ids": torch.zeros_like(input_ids)}
    inputs = prepare_inputs(batch, cfg, "cpu")
    assert ("unpadded" in inputs) == unpad
    assert ("masked_token_index" in inputs) == sparse
    with torch.no_grad():
        expected = model(input_ids, attention_mask, batch["token_type_ids"], labels)
        got = model(**inputs)
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.labels, expected.labels)
    assert torch.equal(got.loss, expected.loss)


def test_prepared_inputs_feed_the_classifier():
    cfg = tiny_config()
    model = MosaicBertForSequenceClassification(cfg, num_labels=3).eval()
    input_ids, attention_mask, _ = ragged_batch([5, 9], seq_len=9)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 2])}
    with torch.no_grad():
        expected = model(input_ids, attention_mask, labels=batch["labels"])
        got = model(**prepare_inputs(batch, cfg, "cpu"))
    assert torch.equal(got.logits, expected.logits)


def test_missing_attention_mask_means_every_token_is_real():
    cfg = tiny_config()
    input_ids, _, labels = ragged_batch([6, 6], seq_len=6)
    inputs = prepare_inputs({"input_ids": input_ids, "labels": labels}, cfg, "cpu")
    assert inputs["unpadded"].indices.numel() == 12 and inputs["unpadded"].max_seqlen == 6


@pytest.mark.gpu
def test_one_pinned_copy_to_the_gpu_gives_the_same_inputs_and_loss():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MosaicBertForMaskedLM(cfg).eval()
    input_ids, attention_mask, labels = ragged_batch([11, 4, 16, 1], seq_len=16, seed=2)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    on_cpu = prepare_inputs(batch, cfg, "cpu")
    on_gpu = prepare_inputs(batch, cfg, "cuda")
    for key in ("input_ids", "attention_mask", "labels", "masked_token_index"):
        assert on_gpu[key].is_cuda and torch.equal(on_gpu[key].cpu(), on_cpu[key]), key
    assert on_gpu["unpadded"].cu_seqlens.dtype == torch.int32
    assert torch.equal(on_gpu["unpadded"].indices.cpu(), on_cpu["unpadded"].indices)
    with torch.no_grad():
        expected = model(**on_cpu).loss
        got = model.cuda()(**on_gpu).loss
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)
