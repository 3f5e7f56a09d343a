"""Bad configs fail before any process group starts, with a message that names the problem."""

import json

import pytest
import torch.distributed as dist

import pretrain_bert
from megabert.config import ConfigError

CONFIG = {
    "model": {"vocab_size": 128, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "data": {"data_path": ["DATA/corpus"], "vocab_file": "DATA/vocab.txt", "seq_len": 32},
    "schedule": {"total_steps": 4},
    "parallel": {"precision": "fp32", "device": "cpu"},
    "global_batch_size": 8, "micro_batch_size": 4,
}


@pytest.fixture
def config_file(tmp_path):
    for name in ("corpus.bin", "corpus.idx", "vocab.txt"):
        (tmp_path / name).write_text("x")
    text = json.dumps(CONFIG).replace("DATA", str(tmp_path))
    path = tmp_path / "c.json"
    path.write_text(text)
    return path


def run(config_file, monkeypatch, *overrides, world_size=1):
    if world_size > 1:
        for key, value in {"RANK": "0", "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        pretrain_bert.main(["--config", str(config_file), *overrides])
    assert not dist.is_initialized()
    return str(err.value)


def test_global_batch_not_divisible_by_micro_times_world(config_file, monkeypatch):
    assert "micro_batch_size x data-parallel size (4 x 3 = 12)" in run(config_file, monkeypatch, world_size=3)


def test_missing_data_path(config_file, monkeypatch, tmp_path):
    message = run(config_file, monkeypatch, "--data.data_path", str(tmp_path / "nope"))
    assert "nope.bin and .idx not found" in message and "preprocess" in message


def test_empty_data_path(config_file, monkeypatch):
    assert "data.data_path is empty" in run(config_file, monkeypatch, "--data.data_path", "[]")


def test_unknown_deepspeed_key(config_file, monkeypatch):
    message = run(config_file, monkeypatch, "--deepspeed_extra", '{"zero_optimisation": {}}')
    assert "unknown DeepSpeed key 'zero_optimisation'" in message


def test_deepspeed_extra_redefining_the_batch(config_file, monkeypatch):
    assert "train_batch_size" in run(config_file, monkeypatch, "--deepspeed_extra", '{"train_batch_size": 64}')


def test_tensor_parallel_without_its_module(config_file, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "megabert.parallel.groups", None)  # as if the TP code were not installed
    message = run(config_file, monkeypatch, "--parallel.tensor_parallel_size", "2", world_size=2)
    assert "tensor parallelism not available" in message


def test_resume_from_a_missing_checkpoint(config_file, monkeypatch):
    assert "does not exist" in run(config_file, monkeypatch, "--checkpoint.resume", "/no/such/ckpt")


def test_deepspeed_launcher_local_rank_argument_is_ignored():
    assert pretrain_bert.parse_args(["--local_rank=3", "--config", "c.json", "--optim.lr", "1"]) == \
        ("c.json", ["--optim.lr", "1"])
    assert pretrain_bert.parse_args(["--local-rank", "0", "--config=c.json"]) == ("c.json", [])
