"""Sizes match the paper, bf16 tracks fp32, and every switch combination runs forward and backward."""

import itertools

import pytest
import torch

from megabert.config import load_config
from megabert.model.bert import MosaicBertForMaskedLM, count_parameters
from tests.conftest import REPO_ROOT
from tests.model.helpers import ragged_batch, tiny_config


def _count(config_name: str) -> int:
    cfg = load_config(REPO_ROOT / "configs" / config_name)
    with torch.device("meta"):
        return count_parameters(MosaicBertForMaskedLM(cfg.model))


def test_base_has_about_137m_parameters_as_the_paper():
    assert 136.5e6 < _count("base.json") < 138.0e6


def test_large_has_about_434m_parameters():
    # 24 layers x (4.2M attention + 12.6M GeGLU) + 31.3M embeddings and head.
    assert 430e6 < _count("large.json") < 440e6


def test_decoder_is_tied_to_word_embeddings():
    model = MosaicBertForMaskedLM(tiny_config())
    input_ids, attention_mask, labels = ragged_batch([5, 8], seq_len=8)
    model(input_ids, attention_mask, labels=labels).loss.backward()
    emb = model.bert.embeddings.word_embeddings.weight
    assert "head.decoder.weight" not in model.state_dict()
    # Gradient reaches the embedding rows of the predicted vocabulary even for tokens absent from the input.
    absent = sorted(set(range(5, 128)) - set(input_ids.flatten().tolist()))[0]
    assert emb.grad[absent].abs().sum() > 0


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_bf16_forward_and_backward_stay_close_to_fp32(unpad):
    torch.manual_seed(0)
    cfg = tiny_config(unpad=unpad, hidden_size=128, num_heads=4, intermediate_size=256)
    model = MosaicBertForMaskedLM(cfg).eval()
    input_ids, attention_mask, labels = ragged_batch([16, 9, 4], seq_len=16)

    def loss_and_grads(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids, attention_mask, labels=labels)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    assert abs(loss16 - loss32) / loss32 < 0.02
    flat32 = torch.cat([g.flatten() for g in grads32])
    flat16 = torch.cat([g.flatten() for g in grads16])
    cosine = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0)
    assert cosine > 0.99


def test_low_precision_layernorm_runs_in_autocast_dtype():
    norm_low = tiny_config(low_precision_layernorm=True)
    model = MosaicBertForMaskedLM(norm_low)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.bert.embeddings.norm(x).dtype == torch.bfloat16
    model_fp32 = MosaicBertForMaskedLM(tiny_config(low_precision_layernorm=False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model_fp32.bert.embeddings.norm(x).dtype == torch.float32


SWITCHES = list(itertools.product(["alibi", "learned"], ["geglu", "gelu"], [True, False], [True, False]))


@pytest.mark.parametrize("position,mlp,unpad,sparse", SWITCHES)
def test_every_switch_combination_trains(position, mlp, unpad, sparse):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(position_embedding=position, mlp_type=mlp, unpad=unpad,
                                              sparse_mlm_head=sparse))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    input_ids, attention_mask, labels = ragged_batch([12, 6], seq_len=12)
    losses = []
    for _ in range(5):
        loss = model(input_ids, attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_alibi_model_has_no_position_embeddings_and_learned_has_them():
    assert MosaicBertForMaskedLM(tiny_config()).bert.embeddings.position_embeddings is None
    assert MosaicBertForMaskedLM(tiny_config(position_embedding="learned")).bert.embeddings.position_embeddings \
        is not None


def test_alibi_model_runs_longer_than_the_learned_table():
    model = MosaicBertForMaskedLM(tiny_config(max_position_embeddings=16)).eval()
    input_ids, attention_mask, _ = ragged_batch([40, 33], seq_len=40)
    with torch.no_grad():
        assert model(input_ids, attention_mask).logits.shape == (2, 40, 128)
