"""The DeepSpeed JSON, generated from megabert's config, and the engine built from it.

Batch size, precision, gradient clipping, optimizer and schedule are defined once in megabert's config; this
module derives the DeepSpeed keys for them. A user adds any other DeepSpeed key through `deepspeed_extra`
(e.g. {"zero_optimization": {"reduce_bucket_size": 2e8}, "activation_checkpointing": {...}}); a key that would
define one of those things a second time, or a top-level key DeepSpeed does not know, is a ConfigError.

The optimizer and the lr schedule are built by megabert (train/optimizer.py) and handed to
`deepspeed.initialize`, never named in the JSON.

Per-micro-batch and per-step work of the engine, and what DeepSpeed settings change of it: docs/ENGINE.md.
"""

from __future__ import annotations

import copy
import difflib
import logging
from pathlib import Path
from typing import Any, Optional

from megabert.config import ConfigError, OptimConfig, ParallelConfig
from megabert.utils.logging import get_logger

log = get_logger(__name__)

# Top-level keys of DeepSpeed's config (deepspeed.ai/docs/config-json and deepspeed/runtime/config.py, 0.14-0.19).
KNOWN_DEEPSPEED_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer", "scheduler",
    "fp16", "bf16", "amp", "torch_autocast", "gradient_clipping", "zero_optimization", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "communication_data_type", "seq_parallel_communication_data_type",
    "prescale_gradients", "gradient_predivide_factor", "gradient_allreduce_op", "sparse_gradients",
    "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown", "disable_allgather",
    "disable_python_gc", "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor",
    "comet", "comms_logger", "monitor_config", "aio", "elasticity", "autotuning", "data_efficiency",
    "curriculum_learning", "compression_training", "checkpoint", "data_types", "dataloader_drop_last",
    "pipeline", "nebula", "hybrid_engine", "compile", "timers", "weight_quantization", "expert_parallel",
    "use_data_before_expert_parallelism", "vocabulary_size", "log_level", "managed_gradient_accumulation",
    "sparse_attention", "eigenvalue", "progressive_layer_drop", "quantize_training", "zenflow", "tensor_parallel",
    "graph_harvesting", "use_node_local_storage", "legacy_fusion", "dist_backend", "mics_shard_size",
})

# Keys megabert derives itself, and the config field that owns each.
DEFINED_BY_MEGABERT = {
    "train_batch_size": "global_batch_size",
    "train_micro_batch_size_per_gpu": "micro_batch_size",
    "gradient_accumulation_steps": "global_batch_size / (micro_batch_size x data-parallel size)",
    "fp16": "parallel.precision",
    "bf16": "parallel.precision",
    "amp": "parallel.precision",
    "torch_autocast": "parallel.precision",
    "optimizer": "the optim section (megabert builds its decoupled AdamW)",
    "scheduler": "the schedule section (megabert builds its warm-up/decay schedule)",
    "gradient_clipping": "optim.grad_clip",
}


def build_deepspeed_config(parallel: ParallelConfig, optim: OptimConfig, global_batch_size: int,
                           micro_batch_size: int, data_parallel_size: int, extra: Optional[dict] = None,
                           on_gpu: bool = True) -> dict[str, Any]:
    """The DeepSpeed JSON for one run. Raises ConfigError for a batch that does not divide or a bad extra key."""
    per_step = micro_batch_size * data_parallel_size
    if global_batch_size % per_step:
        raise ConfigError(f"global_batch_size ({global_batch_size}) is not divisible by micro_batch_size x "
                          f"data-parallel size ({micro_batch_size} x {data_parallel_size} = {per_step})")
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": global_batch_size // per_step,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": _zero_section(parallel.zero_stage, on_gpu),
        # megabert's optimizer is a torch.optim.Adam subclass that ZeRO has not "tested"; it is a plain
        # per-tensor elementwise update, which every ZeRO stage supports.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,  # megabert logs progress itself
        "wall_clock_breakdown": False,
        # The throughput timer synchronises the device at the start of every forward and in every engine.step(),
        # only to print samples/s every steps_per_print steps, which megabert never reaches.
        "timers": {"throughput": {"enabled": False}},
    }
    if parallel.precision == "bf16":
        config["bf16"] = {"enabled": True}
        if parallel.zero_stage == 2:
            # Accumulate micro-batch gradients in fp32, as MosaicBERT's fp32-master mixed precision does: summing
            # 16+ micro-batches in bf16 loses low bits. (For ZeRO-1 this would switch DeepSpeed to its
            # BF16_Optimizer, whose checkpoints zero_to_fp32 cannot read; add it there through deepspeed_extra.)
            config["data_types"] = {"grad_accum_dtype": "fp32"}
    elif parallel.precision == "fp16":
        if not on_gpu:
            raise ConfigError("parallel.precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    return merge_extra(config, extra or {})


def _zero_section(stage: int, on_gpu: bool) -> dict[str, Any]:
    """ZeRO settings of DeepSpeed's own gradient path (flat gradients, flat_gradients.py, use neither its buckets
    nor `overlap_comm`). `overlap_comm` stays on on GPUs even for one replica: it runs the gradient reduction on a
    side stream (the copies into the bucket stay on the compute stream); with it off, ZeRO-2's 1-GPU step on an H200
    took 87.5 ms against 79-82 ms on 2-4 GPUs with it on (separate launches, not an A/B in one run; docs/history/).
    It costs a device synchronisation at the end of every backward; the trainer prepares the next micro-batch on a
    thread so that little host work is left after that sync."""
    section: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        section.update(contiguous_gradients=True, reduce_scatter=True, reduce_bucket_size=int(5e8),
                       allgather_bucket_size=int(5e8), overlap_comm=on_gpu)
    if stage == 3:
        section.update(stage3_gather_16bit_weights_on_model_save=False)
    return section


def merge_extra(config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges the user's raw DeepSpeed keys into the generated config, rejecting keys megabert owns."""
    if not isinstance(extra, dict):
        raise ConfigError(f"deepspeed_extra must be a JSON object, got {type(extra).__name__}")
    merged = copy.deepcopy(config)
    for key, value in extra.items():
        if key in DEFINED_BY_MEGABERT:
            raise ConfigError(f"deepspeed_extra sets '{key}', which megabert derives from {DEFINED_BY_MEGABERT[key]}; "
                              f"set that instead and remove '{key}' from deepspeed_extra")
        if key not in KNOWN_DEEPSPEED_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_DEEPSPEED_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"deepspeed_extra has unknown DeepSpeed key '{key}'{hint}")
        if key == "zero_optimization":
            if not isinstance(value, dict):
                raise ConfigError("deepspeed_extra.zero_optimization must be a JSON object")
            if "stage" in value and value["stage"] != merged[key]["stage"]:
                raise ConfigError(f"deepspeed_extra.zero_optimization.stage ({value['stage']}) conflicts with "
                                  f"parallel.zero_stage ({merged[key]['stage']}); set parallel.zero_stage only")
            merged[key].update(value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def initialize(model, optimizer, lr_scheduler, ds_config: dict[str, Any], mpu: Optional[object] = None,
               flat_gradients: bool = True):
    """deepspeed.initialize over an existing process group. `mpu` carries tensor-parallel groups (or None).

    Returns the engine; engine.optimizer wraps `optimizer`, engine.lr_scheduler is `lr_scheduler`. With
    `flat_gradients`, a ZeRO 1/2 optimizer that qualifies handles gradients in flat buffers (flat_gradients.py).
    """
    import deepspeed
    from deepspeed.utils import logger as deepspeed_logger

    _announce_first_compile()
    deepspeed_logger.addFilter(_known_warnings)
    deepspeed.init_distributed(auto_mpi_discovery=False)  # adopts the torch.distributed group already running
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=ds_config, mpu=mpu, dist_init_required=False)
    if flat_gradients:
        from megabert.parallel.flat_gradients import adopt

        adopt(engine)
    return engine


def _known_warnings(record: logging.LogRecord) -> bool:
    """Drops DeepSpeed's warning about an "untested" optimizer: megabert's DecoupledAdamW is torch's Adam with an
    elementwise decay before it, which every ZeRO stage partitions like Adam (zero_allow_untested_optimizer)."""
    return "untested optimizer" not in record.getMessage()


def _announce_first_compile() -> None:
    """DeepSpeed JIT-compiles its shared-memory communication op (CPU runs) the first time it starts on a machine,
    for about a minute without a word: say so before it starts, and where the result is cached."""
    try:
        from deepspeed.accelerator import get_accelerator
        from torch.utils.cpp_extension import _get_build_directory

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None:
            return
        directory = Path(_get_build_directory(builder.name, verbose=False))
        if not list(directory.glob("*.so")):
            log.info("DeepSpeed compiles its %s op for this machine once (about a minute; cached in %s, or "
                     "TORCH_EXTENSIONS_DIR)", builder.name, directory)
    except Exception:  # noqa: BLE001 -- only a notice: never stop a run over it
        return
