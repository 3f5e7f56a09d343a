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


def test_learned_positions_longer_than_their_table(config_file, monkeypatch):
    message = run(config_file, monkeypatch, "--model.position_embedding", "learned", "--model.mlp_type", "gelu",
                  "--model.max_position_embeddings", "16")
    assert "data.seq_len (32) exceeds model.max_position_embeddings (16)" in message


def test_evaluation_on_without_iterations(config_file, monkeypatch):
    assert "logging.eval_iters (0) must be >= 1" in run(config_file, monkeypatch, "--logging.eval_iters", "0")


def test_a_checkpoint_dir_that_cannot_be_written(config_file, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")  # a directory cannot be made inside a file, even by root
    message = run(config_file, monkeypatch, "--checkpoint.dir", str(tmp_path / "a_file" / "ckpt"))
    assert "checkpoint.dir" in message and "cannot be written" in message


def test_too_little_free_space_for_a_checkpoint(config_file, monkeypatch):
    import collections

    from megabert.train import preflight

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    message = run(config_file, monkeypatch)
    assert "GiB free, but a checkpoint of this model takes up to" in message


def test_a_checkpoint_of_another_model_in_the_checkpoint_dir(config_file, monkeypatch, tmp_path):
    step = tmp_path / "ckpt" / "step_0000010"
    step.mkdir(parents=True)
    saved = json.loads(config_file.read_text())
    saved["model"] = {**saved["model"], "hidden_size": 64}
    (step / "config.json").write_text(json.dumps(saved))
    (step / "trainer_state.json").write_text(json.dumps({"step": 10, "consumed_samples": 80}))
    message = run(config_file, monkeypatch, "--checkpoint.dir", str(tmp_path / "ckpt"))
    assert "holds another model than this config (model.hidden_size 64 -> 32)" in message


def _on_sample(config_file, sample_corpus, tmp_path):
    cfg = json.loads(config_file.read_text())
    cfg["model"]["vocab_size"] = 8192
    cfg["data"] = {**sample_corpus, "seq_len": 32}
    path = tmp_path / "on_sample.json"
    path.write_text(json.dumps(cfg))
    return path


def test_no_validation_share_while_evaluation_is_on(config_file, monkeypatch, tmp_path, sample_corpus):
    message = run(_on_sample(config_file, sample_corpus, tmp_path), monkeypatch, "--data.split", "100,0,0")
    assert "leaves no validation samples" in message and "logging.eval_interval 0" in message


def test_a_damaged_index_is_named_before_anything_starts(config_file, monkeypatch, tmp_path, sample_corpus):
    import shutil

    prefix = sample_corpus["data_path"][0]
    damaged = tmp_path / "damaged"
    for ext in (".bin", ".idx"):
        shutil.copyfile(prefix + ext, str(damaged) + ext)
    data = bytearray((tmp_path / "damaged.idx").read_bytes())
    data[-200] ^= 0xFF  # inside the document index or the pointers, near the end
    (tmp_path / "damaged.idx").write_bytes(bytes(data))
    message = run(_on_sample(config_file, sample_corpus, tmp_path), monkeypatch, "--data.data_path", str(damaged))
    assert "damaged.idx" in message


def test_a_config_with_the_removed_engine_switches_is_told_what_to_do(config_file, monkeypatch):
    message = run(config_file, monkeypatch, "--parallel.engine_switches", '["no_throughput_timer"]')
    assert "parallel.engine_switches" in message and "was removed" in message and "deepspeed_extra" in message


def test_the_default_run_turns_deepspeeds_throughput_timer_off():
    from megabert.config import TrainConfig
    from megabert.parallel.deepspeed_config import build_deepspeed_config

    cfg = TrainConfig()
    ds = build_deepspeed_config(cfg.parallel, cfg.optim, 4096, 128, 1)
    assert ds["timers"]["throughput"]["enabled"] is False
