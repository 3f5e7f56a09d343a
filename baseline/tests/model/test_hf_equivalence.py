"""With every MosaicBERT switch off, megabert is Hugging Face's BertForMaskedLM (fp32, copied weights)."""

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.hf_mapping import hf_bert_to_megabert, megabert_to_hf_bert
from tests.model.helpers import plain_bert_config, ragged_batch

transformers = pytest.importorskip("transformers")


def _hf_model(cfg) -> "transformers.BertForMaskedLM":
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps, attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(hf_cfg).eval()


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_plain_bert_logits_and_loss_match_hugging_face(unpad):
    cfg = plain_bert_config(unpad=unpad)
    hf = _hf_model(cfg)
    ours = MosaicBertForMaskedLM(cfg).eval()
    ours.load_state_dict(hf_bert_to_megabert(hf.state_dict(), cfg))
    input_ids, attention_mask, labels = ragged_batch([12, 7, 1], seq_len=12)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1

    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
        mine = ours(input_ids, attention_mask, token_type_ids, labels=labels)

    real = attention_mask.bool()
    torch.testing.assert_close(mine.logits[real], theirs.logits[real], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-6)


def test_sparse_head_loss_matches_hugging_face():
    cfg = plain_bert_config(sparse_mlm_head=True, unpad=True)
    hf = _hf_model(cfg)
    ours = MosaicBertForMaskedLM(cfg).eval()
    ours.load_state_dict(hf_bert_to_megabert(hf.state_dict(), cfg))
    input_ids, attention_mask, labels = ragged_batch([9, 16, 3, 11], seq_len=16, seed=3)
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        mine = ours(input_ids, attention_mask, labels=labels)
    assert mine.logits.shape[0] == int((labels != -100).sum())
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-6)


def test_state_dict_round_trips_through_hugging_face_layout():
    cfg = plain_bert_config()
    ours = MosaicBertForMaskedLM(cfg)
    state = ours.state_dict()
    back = hf_bert_to_megabert(megabert_to_hf_bert(state, cfg), cfg)
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]), key
