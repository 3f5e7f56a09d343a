"""The trainer stages micro-batches in DataLoader workers: the model receives exactly what staging in the
training process gives it, and the staged object carries no tensor besides its one buffer."""

import functools

import torch

from megabert.config import ModelConfig, load_config
from megabert.data import build_mlm_data
from megabert.model.inputs import stage_inputs
from megabert.train.trainer import stage_for_training
from tests.train.launch import REPO


def _data_cfg(sample_corpus, workers: int):
    cfg = load_config(str(REPO / "configs" / "tiny.json"), validate=False)
    cfg.data.data_path = list(sample_corpus["data_path"])
    cfg.data.vocab_file = sample_corpus["vocab_file"]
    cfg.data.num_workers = workers
    return cfg


def test_inputs_staged_in_workers_equal_inputs_staged_in_the_training_process(sample_corpus):
    cfg = _data_cfg(sample_corpus, workers=1)
    stage = functools.partial(stage_for_training, model_cfg=cfg.model)
    in_workers = build_mlm_data(cfg.data, seed=5, micro_batch_size=8).train_batches(16, transform=stage)
    in_process = build_mlm_data(cfg.data, seed=5, micro_batch_size=8).train_batches(16)
    for _ in range(3):
        (counts, staged), batch = next(in_workers), next(in_process)
        want_counts, want = stage(batch)
        assert counts == want_counts
        assert_same_model_inputs(staged, want)


def assert_same_model_inputs(staged, want) -> None:
    """Two StagedInputs unpack to the same model inputs on the CPU, unpadding bookkeeping included."""
    got, expected = staged.to("cpu"), want.to("cpu")
    assert set(got) == set(expected)
    for name in ("input_ids", "attention_mask", "token_type_ids", "labels", "masked_token_index"):
        assert torch.equal(got[name], expected[name]), name
    for field in ("indices", "cu_seqlens"):
        assert torch.equal(getattr(got["unpadded"], field), getattr(expected["unpadded"], field))
    assert got["unpadded"].max_seqlen == expected["unpadded"].max_seqlen


def test_a_staged_batch_holds_one_buffer_and_its_unpadding_numbers():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, 7, -100, -100], [9, -100, -100, -100]])
    staged = stage_inputs({"input_ids": torch.arange(8).view(2, 4), "attention_mask": mask, "labels": labels}, cfg)
    tensors = [v for v in vars(staged).values() if torch.is_tensor(v)]
    assert len(tensors) == 1 and staged.unpadded.indices is None and staged.unpadded.cu_seqlens is None
    inputs = staged.to("cpu")
    assert inputs["unpadded"].indices.tolist() == [0, 1, 2, 4, 5]
    assert inputs["unpadded"].cu_seqlens.tolist() == [0, 3, 5] and inputs["unpadded"].max_seqlen == 3
    assert inputs["masked_token_index"].tolist() == [1, 3]
