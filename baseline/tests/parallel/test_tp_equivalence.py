"""TP = 2 forward and backward equal TP = 1 (fp32) for the MLM and classification models."""

import pytest
import torch

from megabert.parallel.sharding import shard_spec, split_tensor
from megabert.parallel.tp_checkpoint import merge_state_dicts
from tests.parallel.launch import run_on_processes
from tests.parallel.workers import forward_backward_worker

pytestmark = pytest.mark.slow
TP = 2
TOL = dict(rtol=1e-5, atol=1e-6)
MODELS = ("mosaic_mlm", "mosaic_mlm_dropout", "mosaic_mlm_eager_attention", "plain_bert_mlm", "mosaic_classification")


@pytest.fixture(scope="module")
def ranks():
    """One 2-process run computes every model on both ranks; the tests below inspect it."""
    return run_on_processes(forward_backward_worker, TP)


def _mlp_type(name):
    return "gelu" if name.startswith("plain_bert") else "geglu"


@pytest.mark.parametrize("name", MODELS)
def test_loss_equals_single_device(ranks, name):
    for r in ranks:
        torch.testing.assert_close(r[name]["loss_tp"], r[name]["loss_full"], **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_equal_single_device(ranks, name):
    """MLM logits are this rank's vocabulary slice of the full logits; classifier logits are whole."""
    for rank, r in enumerate(ranks):
        full = r[name]["logits_full"]
        expected = full if "classification" in name else full.chunk(TP, dim=-1)[rank]
        torch.testing.assert_close(r[name]["logits_tp"], expected, **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_merged_gradients_equal_single_device(ranks, name):
    merged = merge_state_dicts([r[name]["grads_tp"] for r in ranks], _mlp_type(name), strict_replicated=False)
    full = ranks[0][name]["grads_full"]
    assert merged.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(merged[key], full[key], **TOL, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_replicated_gradients_agree_across_tp_ranks(ranks, name):
    """LayerNorms, biases after a reduction, pooler...: identical inputs on every TP rank give identical grads,
    so no extra all-reduce is needed (and DeepSpeed counts them once in the gradient norm)."""
    grads = [r[name]["grads_tp"] for r in ranks]
    replicated = [k for k in grads[0] if shard_spec(k, _mlp_type(name)) is None]
    assert any("norm" in k for k in replicated)
    for key in replicated:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=0, atol=1e-7, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_shards_are_exact_slices_and_marked(ranks, name):
    mlp_type = _mlp_type(name)
    for rank, r in enumerate(ranks):
        for key, full in r[name]["state_full"].items():
            spec = shard_spec(key, mlp_type)
            expected = full if spec is None else split_tensor(full, spec, TP, rank)
            assert torch.equal(r[name]["state_tp"][key], expected), key
        for key, marked in r[name]["tensor_model_parallel"].items():
            assert marked == (shard_spec(key, mlp_type) is not None), key


@pytest.mark.parametrize("name", ["mosaic_mlm", "plain_bert_mlm"])
def test_vocab_parallel_argmax_equals_full_argmax(ranks, name):
    for r in ranks:
        assert torch.equal(r[name]["argmax_tp"], r[name]["logits_full"].argmax(dim=-1))


@pytest.mark.parametrize("name", MODELS)
def test_gather_full_state_dict_reassembles_the_single_device_model(ranks, name):
    for r in ranks:
        full, gathered = r[name]["state_full"], r[name]["gathered_state"]
        assert gathered.keys() == full.keys()
        for key in full:
            assert torch.equal(gathered[key], full[key]), key


def test_dropout_with_unsynchronised_seeds_is_refused(ranks):
    for r in ranks:
        assert "random-number state differs between the ranks of a tensor-parallel group" in r["unsynced_rng_error"]
