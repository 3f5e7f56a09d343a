"""The DeepSpeed JSON, generated from megabert's config, and the engine built from it.

Batch size, precision, gradient clipping, optimizer and schedule are defined once in megabert's config; this
module derives the DeepSpeed keys for them. A user adds any other DeepSpeed key through `deepspeed_extra`
(e.g. {"zero_optimization": {"reduce_bucket_size": 2e8}, "activation_checkpointing": {...}}); a key that would
define one of those things a second time, or a top-level key DeepSpeed does not know, is a ConfigError.

The optimizer and the lr schedule are built by megabert (train/optimizer.py) and handed to
`deepspeed.initialize`, never named in the JSON.

Engine switches (ENGINE_SWITCHES, docs/ENGINE.md): named DeepSpeed settings that remove work DeepSpeed does per
micro-batch or per step, each applied only where it holds (ZeRO stage, data-parallel size, device, precision).
A run names the ones it wants in `parallel.engine_switches` (default: `no_throughput_timer`, which only removes a
timer megabert does not use); `build_deepspeed_config(..., switches=NEUTRAL_SWITCHES)` turns on every one that
leaves the updates, the checkpoint format and exact resume as they are; benchmarks/engine_overhead.py times them.
"""

from __future__ import annotations

import copy
import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

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


@dataclass(frozen=True)
class EngineSwitch:
    """One DeepSpeed setting that removes per-micro-batch or per-step work of the engine, and where it applies.

    `keys` is deep-merged into the generated config (before `deepspeed_extra`, which still wins). `neutral` says
    whether the run stays the same run: the same updates (bit for bit where the arithmetic is unchanged), the
    same checkpoint files and exact resume; `caveat` says what changes otherwise."""

    name: str
    keys: dict[str, Any]
    stages: tuple[int, ...]
    replicas: str
    """'one' (data-parallel size 1), 'many' (> 1) or 'any'."""
    why: str
    neutral: bool = True
    caveat: str = ""
    gpu_only: bool = False
    precisions: tuple[str, ...] = ("bf16", "fp16", "fp32")

    def applies(self, zero_stage: int, data_parallel_size: int, on_gpu: bool, precision: str) -> bool:
        replicas_ok = {"one": data_parallel_size == 1, "many": data_parallel_size > 1, "any": True}[self.replicas]
        return (zero_stage in self.stages and replicas_ok and (on_gpu or not self.gpu_only)
                and precision in self.precisions)


OVERLAP_BUCKET_ELEMENTS = int(4e7)
"""Gradient bucket for overlapped reduction with several replicas: 40M elements (Megatron's default bucket), so
that megabert-base's 137M gradients make 4 buckets that reduce while the backward goes on. ZeRO's 5e8 default
holds base and large whole: their only bucket is reduced after the backward has finished, overlapping nothing."""

ENGINE_SWITCHES: dict[str, EngineSwitch] = {s.name: s for s in (
    EngineSwitch(
        "no_throughput_timer", {"timers": {"throughput": {"enabled": False}}}, (0, 1, 2, 3), "any",
        why="DeepSpeed's throughput timer synchronises the device at the start of every forward and in every "
            "engine.step() (from the third optimizer step on), only to print samples/s every steps_per_print "
            "steps, which megabert never reaches (it logs throughput itself). Two device syncs per micro-batch "
            "go, so the host can queue the next micro-batch while the device still computes."),
    EngineSwitch(
        "one_replica_no_overlap", {"zero_optimization": {"overlap_comm": False}}, (1, 2), "one",
        why="With one replica there is no communication to overlap. overlap_comm still runs the gradient "
            "reduction on a side stream, makes the streams wait on each other, keeps a second bucket buffer "
            "(5e8 elements, 1 GB in bf16) and synchronises the whole device at the end of every backward "
            "(ZeRO-2: every micro-batch; ZeRO-1: the last one)."),
    EngineSwitch(
        "one_replica_allreduce", {"zero_optimization": {"reduce_scatter": False}}, (2,), "one",
        why="ZeRO-2's reduce-scatter path divides the gradient bucket by the replica count, flattens the "
            "per-parameter slices into a new tensor and copies the result back into every gradient, each "
            "micro-batch. With one replica the all-reduce path gives the same numbers (a division by 1 and a "
            "one-rank all-reduce change nothing) with one in-place all-reduce and no copies."),
    EngineSwitch(
        "one_replica_no_bucket_copies", {"zero_optimization": {"contiguous_gradients": False}}, (2,), "one",
        why="contiguous_gradients copies each gradient into a preallocated bucket as the backward produces it "
            "(a copy per parameter per micro-batch, from Python, and 1 GB of bucket held per buffer) so that "
            "partitioning across replicas leaves no fragments. With one replica nothing is partitioned: the "
            "gradients stay where autograd put them until they are added into the fp32 accumulation."),
    EngineSwitch(
        "zero1_no_gradient_hooks",
        {"zero_optimization": {"contiguous_gradients": False, "overlap_comm": False}}, (1,), "any",
        why="ZeRO-1 reduces gradients once per optimizer step, yet with contiguous_gradients or overlap_comm on it "
            "installs a Python hook on every parameter that runs in every micro-batch's backward (bookkeeping "
            "only, except in the last) and keeps the bucket buffers allocated over the whole accumulation. "
            "With both off there are no hooks: the gradients accumulate in place and are reduced once, in "
            "engine.step()'s boundary micro-batch. Several replicas lose the overlap of the last micro-batch's "
            "reduction, which ZeRO's 5e8-element bucket does not give for models below 500M parameters anyway."),
    EngineSwitch(
        "many_replicas_overlap_buckets", {"zero_optimization": {"reduce_bucket_size": OVERLAP_BUCKET_ELEMENTS}},
        (2,), "many", gpu_only=True,
        why="overlap_comm can only overlap a bucket that fills before the backward ends; with the 5e8 default "
            "a model below 500M parameters is one bucket, reduced after the backward. 40M-element buckets "
            "reduce while the backward goes on, and the two bucket buffers shrink from 2 GB to 160 MB."),
    EngineSwitch(
        "bf16_no_overflow_scan", {"bf16": {"check_grad_overflow": False}}, (1, 2), "any", precisions=("bf16",),
        neutral=False,
        why="With bf16, ZeRO 1/2 scans every gradient for inf/NaN before the step (two reductions per "
            "parameter, an all-reduce) and reads the result on the host, then reads the norm's finiteness on "
            "the host too: two device syncs per step. megabert's trainer already flags a non-finite loss on "
            "every rank and its fused AdamW skips that update on the device.",
        caveat="DeepSpeed no longer skips a step itself: the lr schedule then advances over a skipped step (as "
               "it does without DeepSpeed) and engine.skipped_steps stays 0; a non-finite gradient from a finite "
               "loss is no longer caught unless the trainer's non-finite flag also covers the gradient norm."),
)}

NEUTRAL_SWITCHES: tuple[str, ...] = tuple(name for name, s in ENGINE_SWITCHES.items() if s.neutral)
"""Every switch that keeps the updates, the checkpoint format and exact resume: candidates for the default."""


def applicable_switches(switches: Iterable[str], zero_stage: int, data_parallel_size: int, on_gpu: bool,
                        precision: str) -> list[str]:
    """The names among `switches` that apply to this run, in ENGINE_SWITCHES order. Unknown names: ConfigError."""
    wanted = list(switches)
    for name in wanted:
        if name not in ENGINE_SWITCHES:
            close = difflib.get_close_matches(name, list(ENGINE_SWITCHES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown engine switch '{name}'{hint} (known: {', '.join(ENGINE_SWITCHES)})")
    return [name for name, s in ENGINE_SWITCHES.items()
            if name in wanted and s.applies(zero_stage, data_parallel_size, on_gpu, precision)]


def switch_keys(switches: Iterable[str], zero_stage: int, data_parallel_size: int, on_gpu: bool,
                precision: str) -> dict[str, Any]:
    """The DeepSpeed keys of the applicable `switches`, merged (one dict, as deepspeed_extra would give them)."""
    keys: dict[str, Any] = {}
    for name in applicable_switches(switches, zero_stage, data_parallel_size, on_gpu, precision):
        for key, value in ENGINE_SWITCHES[name].keys.items():
            if isinstance(value, dict):
                _deep_update(keys.setdefault(key, {}), value)
            else:
                keys[key] = copy.deepcopy(value)
    return keys


def _deep_update(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def build_deepspeed_config(parallel: ParallelConfig, optim: OptimConfig, global_batch_size: int,
                           micro_batch_size: int, data_parallel_size: int, extra: Optional[dict] = None,
                           on_gpu: bool = True, switches: Iterable[str] = ()) -> dict[str, Any]:
    """The DeepSpeed JSON for one run. Raises ConfigError for a batch that does not divide, a bad extra key or an
    unknown switch. `switches` names ENGINE_SWITCHES to turn on where they apply (none by default)."""
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
    _deep_update(config, switch_keys(switches, parallel.zero_stage, data_parallel_size, on_gpu, parallel.precision))
    return merge_extra(config, extra or {})


def _zero_section(stage: int, on_gpu: bool) -> dict[str, Any]:
    """ZeRO settings. `overlap_comm` stays on on GPUs even for one replica (the `one_replica_no_overlap` switch turns
    it off): it runs the gradient reduction on a side stream (the copies into the bucket stay on the compute
    stream); with it off, ZeRO-2's 1-GPU step on an H200 took 87.5 ms against 79-82 ms on 2-4 GPUs with it on
    (separate launches, not an A/B in one run; docs/history/). It costs a device synchronisation at the
    end of every backward; the trainer prepares the next micro-batch on a thread so that little host work is left
    after that sync."""
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


def initialize(model, optimizer, lr_scheduler, ds_config: dict[str, Any], mpu: Optional[object] = None):
    """deepspeed.initialize over an existing process group. `mpu` carries tensor-parallel groups (or None).

    Returns the engine; engine.optimizer wraps `optimizer`, engine.lr_scheduler is `lr_scheduler`.
    """
    import deepspeed
    from deepspeed.utils import logger as deepspeed_logger

    _announce_first_compile()
    deepspeed_logger.addFilter(_known_warnings)
    deepspeed.init_distributed(auto_mpi_discovery=False)  # adopts the torch.distributed group already running
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=ds_config, mpu=mpu, dist_init_required=False)
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
