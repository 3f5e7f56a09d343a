"""Everything a run can check before it starts a process group, loads a model or reads a batch.

A mistake found here costs seconds; found at the first evaluation or save it costs the hours before. Each check
raises ConfigError naming the field (or file) and the fix.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megabert.config import ConfigError, TrainConfig
from megabert.parallel.deepspeed_config import build_deepspeed_config
from megabert.utils.distributed import DistEnv


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
    if check_data:
        check_data_files(cfg)
    if cfg.checkpoint.resume not in ("auto", "none", "") and not Path(cfg.checkpoint.resume).exists():
        raise ConfigError(f"checkpoint.resume {cfg.checkpoint.resume!r} does not exist; use 'auto', 'none' or a "
                          f"checkpoint directory")
    return ds_config


def check_data_files(cfg: TrainConfig) -> None:
    """data.data_path prefixes (weights skipped) must have .bin and .idx; tokenizer files must exist."""
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
    """The dataset prefixes of data.data_path, blend weights left out."""
    return [p for p in cfg.data.data_path if not _is_number(p)]


def tensor_parallel_api():
    """(ParallelGroups, parallelize_model) from megabert.parallel, or a ConfigError when they are not built."""
    try:
        from megabert.parallel.groups import ParallelGroups
        from megabert.parallel.parallelize import parallelize_model
    except ImportError as e:
        raise ConfigError(f"tensor parallelism not available in this installation ({e}); set "
                          f"parallel.tensor_parallel_size 1") from None
    return ParallelGroups, parallelize_model


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
