"""Tensor-parallel checkpoints: one state dict per TP rank, merged to TP = 1 or split to TP = N exactly.

A parallelized model's state dict has the single-device keys with this rank's slices as values (see
megabert.parallel.sharding), so merging is concatenation and splitting is slicing -- bit-exact both ways.

On disk a sharded model directory is megabert's model directory (megabert.model.pretrained) with one weights file
per TP rank:
    config.json                        {"model": ModelConfig, "tensor_parallel_size": N, ...}
    model-tp00-of-02.safetensors       rank 0's state dict
    model-tp01-of-02.safetensors       rank 1's state dict
The merged form is the ordinary model directory (config.json + model.safetensors). DeepSpeed checkpoint tags
(mp_rank_XX_model_states.pt, written by engine.save_checkpoint with mpu=ParallelGroups) are read too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from megabert.config import ModelConfig, from_dict, to_dict
from megabert.model.pretrained import CONFIG_NAME, WEIGHTS_NAME
from megabert.parallel.sharding import merge_tensors, shard_spec, split_tensor

log = logging.getLogger(__name__)

TP_KEY = "tensor_parallel_size"
_DEEPSPEED_SHARD = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def shard_file_name(tp_rank: int, tp_size: int) -> str:
    """The weights file of one TP rank (the ordinary model.safetensors when there is one rank)."""
    return WEIGHTS_NAME if tp_size == 1 else f"model-tp{tp_rank:02d}-of-{tp_size:02d}.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------------------------


def split_state_dict(state: dict[str, torch.Tensor], tp_size: int, mlp_type: str = "geglu"
                     ) -> list[dict[str, torch.Tensor]]:
    """A full (TP = 1) state dict -> tp_size state dicts, one per TP rank (replicated tensors are shared)."""
    if tp_size < 1:
        raise ValueError(f"tp_size must be >= 1, got {tp_size}")
    return [split_state_dict_for_rank(state, tp_size, rank, mlp_type) for rank in range(tp_size)]


def split_state_dict_for_rank(state: dict[str, torch.Tensor], tp_size: int, tp_rank: int,
                              mlp_type: str = "geglu") -> dict[str, torch.Tensor]:
    """TP rank `tp_rank`'s part of split_state_dict (without materialising the other ranks' shards)."""
    out = {}
    for key, tensor in state.items():
        spec = shard_spec(key, mlp_type)
        try:
            out[key] = tensor if spec is None else split_tensor(tensor, spec, tp_size, tp_rank)
        except ValueError as e:
            raise ValueError(f"cannot split {key} {tuple(tensor.shape)} into {tp_size} shards: {e}") from None
    return out


def merge_state_dicts(shards: list[dict[str, torch.Tensor]], mlp_type: str = "geglu",
                      strict_replicated: bool = False) -> dict[str, torch.Tensor]:
    """tp_size state dicts (shards[r] from TP rank r) -> the full state dict.

    Replicated tensors are taken from rank 0. They should be identical on every rank; when they are not (a run
    whose TP ranks diverged), this warns, or raises with `strict_replicated`.
    """
    if not shards:
        raise ValueError("merge_state_dicts needs at least one shard")
    keys = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(keys):
            missing, extra = set(keys) - set(shard), set(shard) - set(keys)
            raise ValueError(f"shard {rank} has different keys from shard 0 (missing {sorted(missing)[:5]}, "
                             f"extra {sorted(extra)[:5]}): are these shards of one checkpoint?")
    merged = {}
    for key in keys:
        tensors = [shard[key] for shard in shards]
        spec = shard_spec(key, mlp_type)
        if spec is not None:
            merged[key] = merge_tensors(tensors, spec)
            continue
        for rank, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != tensors[0].shape or not torch.equal(tensor, tensors[0]):
                message = f"replicated tensor {key} differs between TP rank 0 and TP rank {rank}"
                if strict_replicated:
                    raise ValueError(message)
                log.warning("%s; keeping rank 0's copy", message)
        merged[key] = tensors[0]
    return merged


def gather_full_state_dict(model: nn.Module, group, mlp_type: str = "geglu") -> dict[str, torch.Tensor]:
    """The full (TP = 1) state dict of a parallelized model, assembled on every rank of its TP group, on CPU.

    Collective over `group` (call it on every TP rank). For exporting a tensor-parallel run to a plain model
    directory.
    """
    return gather_full_tensors(model.state_dict(), group, mlp_type)


def gather_full_tensors(local: dict[str, torch.Tensor], group, mlp_type: str = "geglu") -> dict[str, torch.Tensor]:
    """Like gather_full_state_dict for any {parameter name: this rank's tensor} (gradients, say): one all-gather
    per sharded tensor, results on CPU."""
    import torch.distributed as dist

    size = 1 if group is None else dist.get_world_size(group)
    full = {}
    for key, tensor in local.items():
        spec = shard_spec(key, mlp_type)
        tensor = tensor.detach()
        if spec is None or size == 1:
            full[key] = tensor.cpu().clone()
            continue
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor, group=group)
        full[key] = merge_tensors([p.cpu() for p in parts], spec)
    return full


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def save_sharded(shards: list[dict[str, torch.Tensor]], directory: str | Path, model_cfg: ModelConfig,
                 extra: Optional[dict] = None) -> Path:
    """Writes config.json and one safetensors file per TP rank."""
    for rank, shard in enumerate(shards):
        write_shard(shard, directory, rank, len(shards))
    write_config(directory, model_cfg, len(shards), extra)
    return Path(directory)


def write_shard(state: dict[str, torch.Tensor], directory: str | Path, tp_rank: int, tp_size: int) -> Path:
    """One rank's weights file (atomically: a temporary file renamed into place)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / shard_file_name(tp_rank, tp_size)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path


def write_config(directory: str | Path, model_cfg: ModelConfig, tp_size: int, extra: Optional[dict] = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = {"model": to_dict(model_cfg), **(extra or {})}
    if tp_size > 1:
        content[TP_KEY] = tp_size
    else:
        content.pop(TP_KEY, None)
    (directory / CONFIG_NAME).write_text(json.dumps(content, indent=2) + "\n")


def read_config(directory: str | Path) -> tuple[Optional[ModelConfig], dict]:
    """(ModelConfig or None, the whole config.json or {})."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None, {}
    content = json.loads(path.read_text())
    return from_dict(ModelConfig, content["model"], "model."), content


def read_shards(directory: str | Path, fp32_master: bool = True) -> list[dict[str, torch.Tensor]]:
    """The per-rank state dicts of a sharded model directory, of a DeepSpeed checkpoint tag directory, or of a
    directory holding exactly one such tag directory (a trainer's step_N/); a TP = 1 model directory reads as a
    single shard.

    For DeepSpeed checkpoints with ZeRO optimizer files and `fp32_master`, each TP rank's fp32 master weights are
    consolidated over its data-parallel partitions (DeepSpeed's zero_to_fp32, one TP rank at a time): the exact
    weights of a bf16 run, not their bf16 copies. Otherwise the module weights as saved are used.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    _, content = read_config(directory)
    if TP_KEY in content:
        tp_size = int(content[TP_KEY])
        paths = [directory / shard_file_name(r, tp_size) for r in range(tp_size)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} declares {TP_KEY}={tp_size} but lacks {', '.join(missing)}")
        return [load_file(str(p)) for p in paths]
    if (directory / WEIGHTS_NAME).is_file():
        return [load_file(str(directory / WEIGHTS_NAME))]
    tag_dir = _deepspeed_tag_dir(directory)
    if tag_dir is None:
        raise FileNotFoundError(f"{directory} holds neither a megabert model ({CONFIG_NAME} + {WEIGHTS_NAME} or "
                                f"{shard_file_name(0, 2)}...) nor DeepSpeed mp_rank_XX_model_states.pt files")
    model_files = sorted((int(m.group(1)), p) for p in tag_dir.iterdir() if (m := _DEEPSPEED_SHARD.match(p.name)))
    ranks = [r for r, _ in model_files]
    if ranks != list(range(len(ranks))):
        raise FileNotFoundError(f"{tag_dir} has DeepSpeed model files for TP ranks {ranks}; expected 0..N-1")
    shards = []
    for tp_rank, model_file in model_files:
        optim_files = sorted(tag_dir.glob(f"*zero_pp_rank_*_mp_rank_{tp_rank:02d}_optim_states.pt"))
        if fp32_master and optim_files:
            shards.append(_zero_fp32_master_weights(model_file, optim_files))
        else:
            shards.append(torch.load(model_file, map_location="cpu", weights_only=False)["module"])
    return shards


def _deepspeed_tag_dir(directory: Path) -> Optional[Path]:
    has_files = lambda d: any(_DEEPSPEED_SHARD.match(p.name) for p in d.iterdir())
    if has_files(directory):
        return directory
    tags = [d for d in sorted(directory.iterdir()) if d.is_dir() and has_files(d)]
    if len(tags) > 1:
        names = ", ".join(d.name for d in tags)
        raise FileNotFoundError(f"{directory} holds several DeepSpeed checkpoint tags ({names}); pass one of them")
    return tags[0] if tags else None


def _zero_fp32_master_weights(model_file: Path, optim_files: list[Path]) -> dict[str, torch.Tensor]:
    """One TP rank's fp32 weights from its ZeRO 1/2 partitions. DeepSpeed's zero_to_fp32 reads every
    *_model_states.pt / *_optim_states.pt of a tag directory, so it is shown only this rank's files."""
    import tempfile

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tag = Path(tmp) / "tp_rank"
        tag.mkdir()
        for f in [model_file, *optim_files]:
            (tag / f.name).symlink_to(f.resolve())
        state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag="tp_rank")
    return {k: v.contiguous() for k, v in state.items()}


def load_rank_state_dict(directory: str | Path, tp_size: int, tp_rank: int,
                         mlp_type: Optional[str] = None) -> dict[str, torch.Tensor]:
    """TP rank `tp_rank`'s state dict for a run with `tp_size` ranks, from any directory read_shards understands,
    whatever TP it was saved with (merged and re-split in memory when the sizes differ). For loading weights
    into a parallelized model: `model.load_state_dict(load_rank_state_dict(d, groups.tp_size, groups.tp_rank))`.
    """
    cfg, _ = read_config(directory)
    mlp_type = mlp_type or (cfg.mlp_type if cfg is not None else None)
    if mlp_type is None:
        raise ValueError(f"{directory} has no {CONFIG_NAME}: pass mlp_type ('geglu' or 'gelu')")
    shards = read_shards(directory)
    if len(shards) == tp_size:
        return shards[tp_rank]
    full = shards[0] if len(shards) == 1 else merge_state_dicts(shards, mlp_type)
    return split_state_dict_for_rank(full, tp_size, tp_rank, mlp_type)


def merge_checkpoint(src: str | Path, dst: str | Path, model_cfg: Optional[ModelConfig] = None,
                     strict_replicated: bool = False, fp32_master: bool = True) -> Path:
    """A TP = N checkpoint directory -> a TP = 1 model directory (config.json + model.safetensors).

    `src`: a sharded model directory, a DeepSpeed tag directory or a trainer checkpoint (step_N/, whose
    config.json is the run config). See read_shards for `fp32_master`.
    """
    cfg, content = read_config(src)
    cfg = model_cfg or cfg
    if cfg is None:
        raise FileNotFoundError(f"{src} has no {CONFIG_NAME}; pass the model config (--model-config) explicitly")
    shards = read_shards(src, fp32_master)
    merged = merge_state_dicts(shards, cfg.mlp_type, strict_replicated)
    return save_sharded([merged], dst, cfg, _model_dir_extras(content, src))


def split_checkpoint(src: str | Path, dst: str | Path, tp_size: int,
                     model_cfg: Optional[ModelConfig] = None) -> Path:
    """A TP = 1 model directory -> a TP = tp_size sharded model directory."""
    from megabert.parallel.groups import validate_tensor_parallel

    cfg, content = read_config(src)
    cfg = model_cfg or cfg
    if cfg is None:
        raise FileNotFoundError(f"{src} has no {CONFIG_NAME}; pass the model config (--model-config) explicitly")
    validate_tensor_parallel(cfg, tp_size)
    shards = read_shards(src)
    if len(shards) != 1:
        raise ValueError(f"{src} is already split into {len(shards)} TP shards; merge it first (merge-tp)")
    return save_sharded(split_state_dict(shards[0], tp_size, cfg.mlp_type), dst, cfg,
                        _model_dir_extras(content, src))


def _model_dir_extras(content: dict, src: str | Path) -> dict:
    """What a converted model directory keeps from its source's config.json: a model directory's extra keys;
    of a whole run config (it has a 'parallel' section) only where it came from."""
    if "parallel" in content:
        return {"source_checkpoint": str(src)}
    return {k: v for k, v in content.items() if k not in ("model", TP_KEY)}
