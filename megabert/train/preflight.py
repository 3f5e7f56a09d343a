"""Everything a run can check before it starts a process group, loads a model or reads a batch.

A mistake found here costs seconds; found at the first evaluation or save it costs the hours before. Each check
raises ConfigError naming the field (or file) and the fix. In order:
  1. the config on its own and its combinations (config.validate, the world size, learned positions against
     seq_len, the DeepSpeed JSON it generates);
  2. paths: output_dir and checkpoint.dir can be written, checkpoint.dir's file system has room for a checkpoint,
     a checkpoint to resume or initialise from exists, and one already in checkpoint.dir is of this model;
  3. the data (megabert.data.check_training_data): files, index integrity, token ids against the vocabulary,
     training and -- with evaluation on -- validation samples left by data.split.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from megabert.checkpoint.manager import latest_checkpoint
from megabert.config import ConfigError, ModelConfig, TrainConfig
from megabert.data.samples import parse_data_path
from megabert.parallel.deepspeed_config import build_deepspeed_config
from megabert.utils.distributed import DistEnv

ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "type_vocab_size", "position_embedding", "mlp_type")
"""ModelConfig fields that decide the shapes of the weights (what a checkpoint must match to be resumed)."""
CHECKPOINT_BYTES_PER_PARAMETER = 16
"""An upper estimate of a checkpoint's size per parameter: the module (2 or 4 bytes), fp32 master weights (4) and
Adam's two moments (8)."""


def preflight(cfg: TrainConfig, env: DistEnv, check_data: bool = True) -> dict:
    """Every check that needs no process group; returns the DeepSpeed JSON. Raises ConfigError."""
    cfg.validate()
    cfg.validate_world(env.world_size)
    tp = cfg.parallel.tensor_parallel_size
    if tp > 1:
        tensor_parallel_api()
    on_gpu = cfg.parallel.device != "cpu" and torch.cuda.is_available()
    ds_config = build_deepspeed_config(cfg.parallel, cfg.optim, cfg.global_batch_size, cfg.micro_batch_size,
                                       env.world_size // tp, cfg.deepspeed_extra, on_gpu=on_gpu)
    check_combinations(cfg)
    if check_data:
        check_data_files(cfg)
    if cfg.checkpoint.resume not in ("auto", "none", "") and not Path(cfg.checkpoint.resume).exists():
        raise ConfigError(f"checkpoint.resume {cfg.checkpoint.resume!r} does not exist; use 'auto', 'none' or a "
                          f"checkpoint directory")
    if cfg.checkpoint.init_from and not Path(cfg.checkpoint.init_from).exists():
        raise ConfigError(f"checkpoint.init_from {cfg.checkpoint.init_from!r} does not exist; give a megabert model "
                          f"directory (e.g. runs/base/model)")
    check_writable(cfg, env.rank)
    check_existing_checkpoint(cfg)
    check_free_space(cfg)
    if check_data:
        from megabert.data import check_training_data

        check_training_data(cfg.data, model_vocab_size=cfg.model.vocab_size,
                            need_validation=cfg.logging.eval_interval > 0)
    return ds_config


def check_combinations(cfg: TrainConfig) -> None:
    """Values that are each valid but cannot train together."""
    model, data = cfg.model, cfg.data
    if model.position_embedding == "learned" and data.seq_len > model.max_position_embeddings:
        raise ConfigError(f"data.seq_len ({data.seq_len}) exceeds model.max_position_embeddings "
                          f"({model.max_position_embeddings}) of the learned position table; raise "
                          f"max_position_embeddings to at least {data.seq_len} or lower seq_len (ALiBi has no limit)")
    if cfg.logging.eval_interval and cfg.logging.eval_iters < 1:
        raise ConfigError(f"logging.eval_iters ({cfg.logging.eval_iters}) must be >= 1 while evaluation is on; "
                          f"set it to e.g. 20, or logging.eval_interval 0 to turn evaluation off")


def check_writable(cfg: TrainConfig, rank: int) -> None:
    """output_dir and checkpoint.dir can be created and written (a probe file, removed again)."""
    for field, path in (("output_dir", cfg.output_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        directory = Path(path)
        probe = directory / f".megabert-write-test-{rank}-{uuid.uuid4().hex[:8]}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"{field} {str(directory)!r} cannot be written ({e.strerror or e}); choose a directory "
                              f"this user can write, e.g. --{field} runs/my_run") from None


def check_existing_checkpoint(cfg: TrainConfig) -> None:
    """A checkpoint in checkpoint.dir that this run would resume must be of this model and tensor-parallel size."""
    if cfg.checkpoint.resume == "none":
        return
    found = Path(cfg.checkpoint.resume) if cfg.checkpoint.resume not in ("auto", "") else None
    if found is not None and not (found / "config.json").is_file():
        found = latest_checkpoint(found)
    found = found or latest_checkpoint(cfg.checkpoint.dir)
    if found is None or not (found / "config.json").is_file():
        return
    saved = json.loads((found / "config.json").read_text())
    saved_model = {**asdict(ModelConfig()), **saved.get("model", {})}  # fields it did not write: their defaults
    differences = [f"model.{name} {saved_model[name]!r} -> {getattr(cfg.model, name)!r}"
                   for name in ARCHITECTURE_FIELDS if saved_model[name] != getattr(cfg.model, name)]
    saved_tp = saved.get("parallel", {}).get("tensor_parallel_size", 1)
    if saved_tp != cfg.parallel.tensor_parallel_size:
        differences.append(f"parallel.tensor_parallel_size {saved_tp} -> {cfg.parallel.tensor_parallel_size}")
    if differences:
        raise ConfigError(f"checkpoint {found} holds another model than this config ({'; '.join(differences)}); "
                          f"resuming it cannot work. Use a new checkpoint.dir for a new model, or the config it "
                          f"was trained with (its config.json); a tensor-parallel size can be changed with "
                          f"tools/convert_checkpoint.py merge-tp / split-tp")


def estimated_checkpoint_bytes(cfg: TrainConfig) -> int:
    """An upper estimate of one checkpoint's size on disk (all ranks together)."""
    from megabert.model.bert import MosaicBertForMaskedLM, count_parameters

    with torch.device("meta"):
        parameters = count_parameters(MosaicBertForMaskedLM(cfg.model))
    return parameters * CHECKPOINT_BYTES_PER_PARAMETER


def check_free_space(cfg: TrainConfig) -> None:
    """checkpoint.dir's file system has room for one more checkpoint (the next one is written before the oldest
    is deleted)."""
    needed = estimated_checkpoint_bytes(cfg)
    free = shutil.disk_usage(cfg.checkpoint.dir).free
    if free < needed:
        raise ConfigError(f"checkpoint.dir {cfg.checkpoint.dir!r} has {free / 2 ** 30:.2f} GiB free, but a "
                          f"checkpoint of this model takes up to {needed / 2 ** 30:.2f} GiB; free some space or "
                          f"point checkpoint.dir at a larger file system")


def check_data_files(cfg: TrainConfig) -> None:
    """data.data_path prefixes (weights skipped) must have .bin and .idx; tokenizer files must exist (the cheap
    part, before the paths; their content is checked last)."""
    prefixes = data_prefixes(cfg)
    if not prefixes:
        raise ConfigError("data.data_path is empty; preprocess a corpus with tools/preprocess_data.py and set "
                          "data.data_path to its output prefix")
    for prefix in prefixes:
        missing = [ext for ext in (".bin", ".idx") if not Path(prefix + ext).is_file()]
        if missing:
            raise ConfigError(f"data.data_path: {prefix}{' and '.join(missing)} not found; preprocess the corpus "
                              f"first (tools/preprocess_data.py --output-prefix {prefix} ...)")
    for name in ("vocab_file", "tokenizer_model"):
        path = getattr(cfg.data, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"data.{name} {path!r} not found")


def data_prefixes(cfg: TrainConfig) -> list[str]:
    """The dataset prefixes of data.data_path, blend weights left out (the loader's own reading of it)."""
    try:
        return parse_data_path(cfg.data.data_path)[0]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def tensor_parallel_api():
    """(ParallelGroups, parallelize_model) from megabert.parallel, or a ConfigError when they are not built."""
    try:
        from megabert.parallel.groups import ParallelGroups
        from megabert.parallel.parallelize import parallelize_model
    except ImportError as e:
        raise ConfigError(f"tensor parallelism not available in this installation ({e}); set "
                          f"parallel.tensor_parallel_size 1") from None
    return ParallelGroups, parallelize_model
