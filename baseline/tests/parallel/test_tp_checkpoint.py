"""Merging TP shards and splitting full checkpoints is exact, in memory and through tools/convert_checkpoint.py."""

import importlib.util

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.model.pretrained import save_pretrained
from megabert.parallel.sharding import ShardSpec, merge_tensors, split_tensor
from megabert.parallel.tp_checkpoint import (load_rank_state_dict, merge_state_dicts, read_shards, save_sharded,
                                             split_state_dict)
from tests.parallel.tiny import plain_bert_config, tiny_config

MODELS = {
    "mosaic_mlm": lambda: MosaicBertForMaskedLM(tiny_config()),
    "plain_bert_mlm": lambda: MosaicBertForMaskedLM(plain_bert_config()),
    "mosaic_classification": lambda: MosaicBertForSequenceClassification(tiny_config(), num_labels=2),
}


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("name", MODELS)
def test_split_then_merge_is_bit_exact(name, tp):
    torch.manual_seed(0)
    model = MODELS[name]()
    state = model.state_dict()
    shards = split_state_dict(state, tp, model.cfg.mlp_type)
    assert len(shards) == tp
    qkv = shards[0]["bert.encoder.layers.0.attention.qkv.weight"]
    assert qkv.shape == (3 * 32 // tp, 32)
    merged = merge_state_dicts(shards, model.cfg.mlp_type, strict_replicated=True)
    assert merged.keys() == state.keys()
    for key in state:
        assert torch.equal(merged[key], state[key]), key


def test_fused_blocks_are_split_block_by_block():
    """[q | k | v] with 2 heads each over 2 ranks: rank 0 gets [q0 | k0 | v0], not the first third of q."""
    full = torch.arange(6.0)[:, None]  # rows q0 q1 k0 k1 v0 v1
    spec = ShardSpec(0, blocks=3)
    assert split_tensor(full, spec, 2, 0).flatten().tolist() == [0.0, 2.0, 4.0]
    assert split_tensor(full, spec, 2, 1).flatten().tolist() == [1.0, 3.0, 5.0]
    assert torch.equal(merge_tensors([split_tensor(full, spec, 2, r) for r in range(2)], spec), full)


def test_merge_rejects_shards_of_different_models():
    a = split_state_dict(MosaicBertForMaskedLM(tiny_config()).state_dict(), 2)
    a[1].pop("head.decoder_bias")
    with pytest.raises(ValueError, match="shard 1 has different keys"):
        merge_state_dicts(a)


def test_merge_flags_diverged_replicated_tensors():
    shards = split_state_dict(MosaicBertForMaskedLM(tiny_config()).state_dict(), 2)
    shards[1] = dict(shards[1], **{"head.norm.weight": shards[1]["head.norm.weight"] + 1})
    with pytest.raises(ValueError, match="head.norm.weight differs between TP rank 0 and TP rank 1"):
        merge_state_dicts(shards, strict_replicated=True)


@pytest.fixture
def convert(repo_root):
    """tools/convert_checkpoint.py's main(argv), loaded in-process (a subprocess would re-import torch)."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", repo_root / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_convert_checkpoint_split_tp_and_merge_tp_round_trip(tmp_path, convert, capsys):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config())
    save_pretrained(model, tmp_path / "full", model.cfg)

    assert convert(["split-tp", str(tmp_path / "full"), str(tmp_path / "tp2"), "--tp", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "tp2").iterdir()) == [
        "config.json", "model-tp00-of-02.safetensors", "model-tp01-of-02.safetensors"]

    merge_args = ["merge-tp", str(tmp_path / "tp2"), str(tmp_path / "merged"), "--strict"]
    assert convert(merge_args) == 0
    (merged,) = read_shards(tmp_path / "merged")
    state = model.state_dict()
    assert merged.keys() == state.keys()
    assert all(torch.equal(merged[k], state[k]) for k in state)

    capsys.readouterr()
    assert convert(["split-tp", str(tmp_path / "tp2"), str(tmp_path / "x"), "--tp", "2"]) == 2
    assert "already split into 2 TP shards" in capsys.readouterr().err


def test_convert_checkpoint_split_tp_rejects_sizes_that_do_not_split(tmp_path, convert, capsys):
    model = MosaicBertForMaskedLM(tiny_config())
    save_pretrained(model, tmp_path / "full", model.cfg)
    assert convert(["split-tp", str(tmp_path / "full"), str(tmp_path / "tp3"), "--tp", "3"]) == 2
    assert "model.num_heads (4) is not divisible by tensor_parallel_size (3)" in capsys.readouterr().err


@pytest.mark.parametrize("saved_tp,run_tp", [(1, 2), (2, 2), (2, 4), (4, 2), (2, 1)])
def test_a_rank_loads_its_shard_whatever_tp_the_checkpoint_has(tmp_path, saved_tp, run_tp):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(plain_bert_config())
    state = model.state_dict()
    save_sharded(split_state_dict(state, saved_tp, "gelu"), tmp_path / "saved", model.cfg)
    expected = split_state_dict(state, run_tp, "gelu")
    for rank in range(run_tp):
        loaded = load_rank_state_dict(tmp_path / "saved", run_tp, rank)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], expected[rank][k]) for k in state)
