"""Removing padding changes nothing but speed."""

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from tests.model.helpers import ragged_batch, tiny_config


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_unpadded_and_padded_paths_agree(backend):
    torch.manual_seed(0)
    padded = MosaicBertForMaskedLM(tiny_config(unpad=False, sparse_mlm_head=False, attention_backend=backend)).eval()
    unpadded = MosaicBertForMaskedLM(tiny_config(unpad=True, sparse_mlm_head=False, attention_backend=backend)).eval()
    unpadded.load_state_dict(padded.state_dict())
    input_ids, attention_mask, labels = ragged_batch([10, 3, 16, 1], seq_len=16)
    with torch.no_grad():
        a = padded(input_ids, attention_mask, labels=labels)
        b = unpadded(input_ids, attention_mask, labels=labels)
    real = attention_mask.bool()
    torch.testing.assert_close(a.logits[real], b.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_sequence_output_does_not_depend_on_padding_around_it(unpad):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(unpad=unpad, sparse_mlm_head=False)).eval()
    input_ids, attention_mask, _ = ragged_batch([6], seq_len=6)
    with torch.no_grad():
        alone = model(input_ids, attention_mask).logits[0]  # [6, V]
        for seq_len, others in ((20, [20, 2]), (9, [1])):
            ids2, mask2, _ = ragged_batch(others, seq_len=seq_len, seed=5)
            ids = torch.zeros(len(others) + 1, seq_len, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[0, :6], mask[0, :6] = input_ids[0], 1
            ids[1:], mask[1:] = ids2, mask2
            crowded = model(ids, mask).logits[0, :6]
            torch.testing.assert_close(crowded, alone, atol=1e-5, rtol=1e-5)


def test_sparse_head_equals_dense_head_on_masked_positions():
    torch.manual_seed(0)
    dense = MosaicBertForMaskedLM(tiny_config(sparse_mlm_head=False)).eval()
    sparse = MosaicBertForMaskedLM(tiny_config(sparse_mlm_head=True)).eval()
    sparse.load_state_dict(dense.state_dict())
    input_ids, attention_mask, labels = ragged_batch([13, 5, 16], seq_len=16, seed=1)
    with torch.no_grad():
        d = dense(input_ids, attention_mask, labels=labels)
        s = sparse(input_ids, attention_mask, labels=labels)
    masked = labels != -100
    torch.testing.assert_close(s.logits, d.logits[masked], atol=1e-5, rtol=1e-5)
    assert torch.equal(s.labels, labels[masked])
    torch.testing.assert_close(s.loss, d.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_classifier_pools_the_same_cls_padded_or_not(num_labels):
    torch.manual_seed(0)
    padded = MosaicBertForSequenceClassification(tiny_config(unpad=False), num_labels).eval()
    unpadded = MosaicBertForSequenceClassification(tiny_config(unpad=True), num_labels).eval()
    unpadded.load_state_dict(padded.state_dict())
    input_ids, attention_mask, _ = ragged_batch([4, 11, 2], seq_len=11)
    labels = torch.tensor([0.5, -1.0, 2.0]) if num_labels == 1 else torch.tensor([0, 2, 1])
    with torch.no_grad():
        a = padded(input_ids, attention_mask, labels=labels)
        b = unpadded(input_ids, attention_mask, labels=labels)
    assert a.logits.shape == (3, num_labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
