"""Configs parse, override and fail early with messages that name the field and the fix."""

import json

import pytest

from megabert.config import (ConfigError, ModelConfig, TrainConfig, apply_overrides, describe_fields, from_dict,
                             load_config, save_config)
from tests.conftest import REPO_ROOT

SHIPPED = sorted((REPO_ROOT / "configs").glob("*.json"))


def test_there_are_shipped_configs():
    assert {p.name for p in SHIPPED} >= {"tiny.json", "base.json", "large.json"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    cfg.validate_world(1)


def test_base_and_large_are_the_papers_architectures():
    base, large = load_config(REPO_ROOT / "configs/base.json"), load_config(REPO_ROOT / "configs/large.json")
    assert (base.model.num_layers, base.model.hidden_size, base.model.num_heads, base.model.intermediate_size) == \
        (12, 768, 12, 3072)
    assert (large.model.num_layers, large.model.hidden_size, large.model.num_heads,
            large.model.intermediate_size) == (24, 1024, 16, 4096)
    for cfg in (base, large):
        assert cfg.model.vocab_size == 30528
        assert cfg.data.mask_prob == 0.3
        assert cfg.global_batch_size == 4096 and cfg.schedule.total_steps == 70000


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(REPO_ROOT / "configs/base.json")
    save_config(cfg, tmp_path / "resolved.json")
    assert load_config(tmp_path / "resolved.json") == cfg


def test_overrides_parse_types_and_both_syntaxes():
    cfg = TrainConfig()
    apply_overrides(cfg, ["--model.num_layers", "4", "--optim.lr=1e-4", "--model.unpad", "false",
                          "--data.data_path", "a,b", "--checkpoint.init_from", "none"])
    assert cfg.model.num_layers == 4 and cfg.optim.lr == 1e-4 and cfg.model.unpad is False
    assert cfg.data.data_path == ["a", "b"] and cfg.checkpoint.init_from is None


def test_unknown_override_suggests_the_closest_key():
    with pytest.raises(ConfigError, match=r"did you mean 'model.num_heads'"):
        apply_overrides(TrainConfig(), ["--model.num_head", "8"])


def test_unknown_json_key_suggests_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.weight_decy'.*did you mean 'weight_decay'"):
        from_dict(TrainConfig, {"optim": {"weight_decy": 0.1}})


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match="model.num_layers must be of type int"):
        from_dict(TrainConfig, {"model": {"num_layers": "twelve"}})


@pytest.mark.parametrize("changes,message", [
    ({"hidden_size": 768, "num_heads": 10}, r"hidden_size \(768\) is not divisible by model.num_heads \(10\)"),
    ({"vocab_size": 30522}, r"vocab_size \(30522\) is not a multiple of 64; pad it to 30528"),
    ({"mlp_type": "swiglu"}, r"model.mlp_type is 'swiglu'"),
    ({"attention_backend": "flash"}, r"did you mean 'flash_attn'"),
])
def test_bad_model_configs_get_clear_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes).validate()


def test_batch_that_does_not_divide_is_rejected():
    cfg = TrainConfig(global_batch_size=100, micro_batch_size=8)
    with pytest.raises(ConfigError, match="global_batch_size .100. is not divisible by micro_batch_size"):
        cfg.validate()
    cfg = TrainConfig(global_batch_size=96, micro_batch_size=8)
    with pytest.raises(ConfigError, match=r"micro_batch_size x data-parallel size \(8 x 5 = 40\)"):
        cfg.validate_world(5)


def test_tensor_parallel_must_divide_heads_and_forbids_zero3():
    cfg = TrainConfig()
    cfg.parallel.tensor_parallel_size = 5
    with pytest.raises(ConfigError, match="num_heads .12. is not divisible by parallel.tensor_parallel_size"):
        cfg.validate()
    cfg.parallel.tensor_parallel_size, cfg.parallel.zero_stage = 2, 3
    with pytest.raises(ConfigError, match="zero_stage 3 cannot be combined"):
        cfg.validate()


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_every_field_has_a_docstring():
    missing = [name for name, _, doc in describe_fields() if not doc]
    assert missing == []


def test_describe_fields_reports_defaults():
    rows = {name: default for name, default, _ in describe_fields()}
    assert json.loads(rows["model.vocab_size"]) == 30528
    assert json.loads(rows["optim.betas"]) == [0.9, 0.98]


def test_checkpoints_live_under_the_output_dir_unless_placed_elsewhere(tmp_path):
    """--output_dir gives a run its own checkpoints: with checkpoint.resume 'auto' it must not resume the ones of
    the run the config names."""
    base = REPO_ROOT / "configs" / "base.json"
    assert load_config(base).checkpoint.dir == "runs/base/checkpoints"
    moved = load_config(base, ["--output_dir", str(tmp_path / "exp2")])
    assert moved.checkpoint.dir == str(tmp_path / "exp2" / "checkpoints")
    placed = load_config(base, ["--output_dir", str(tmp_path / "exp3"), "--checkpoint.dir", str(tmp_path / "ckpt")])
    assert placed.checkpoint.dir == str(tmp_path / "ckpt")
    save_config(moved, tmp_path / "resolved.json")  # what a checkpoint records: the directory it was written to
    assert json.loads((tmp_path / "resolved.json").read_text())["checkpoint"]["dir"] == moved.checkpoint.dir
