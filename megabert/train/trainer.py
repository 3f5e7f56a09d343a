"""The pretraining loop: MosaicBERT through a DeepSpeed engine, from one CPU process to many GPU nodes.

    Trainer(cfg).train()

setup() builds, in order: the process group (any launcher, utils/distributed.py), the model and its optional
tensor-parallel step, the data, optimizer, schedule and DeepSpeed engine, then resumes from a checkpoint. train()
runs the loop; each component decides its own interval:

    TrainStep          one optimizer step over `accum` micro-batches, non-finite flags read a step late (step.py)
    NonFiniteSteps     skipped steps counted; K in a row stop the run
    Telemetry          log windows, metrics, progress, the run clock (telemetry.py)
    WallClockBudget    with schedule.budget_minutes, the step count fixed from the measured rate (budget.py)
    Validator          validation MLM loss and accuracy every eval_interval steps (evaluate.py)
    CheckpointManager  a checkpoint every save_interval steps and at the end (megabert/checkpoint/)
    GarbageCollection  setup's objects frozen out of the garbage collector's scans (garbage.py)
    callbacks          on_window_end(trainer, metrics) after each log window; their time is off the clock

SIGTERM or SIGUSR1 (on any rank) saves a checkpoint and exits cleanly; at the end the model is exported to
output_dir/model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from megabert.checkpoint.manager import CheckpointManager, resolve_resume, step_dir_name
from megabert.config import ConfigError, ParallelConfig, TrainConfig, to_dict
from megabert.model.inputs import PackedInputs, pack_inputs
from megabert.train import metrics as M
from megabert.train.budget import BUDGET_KEY, budget_for_run, max_over_ranks, refresh_lr
from megabert.train.evaluate import Validator
from megabert.train.garbage import GarbageCollection
from megabert.train.preflight import preflight, tensor_parallel_api
from megabert.train.prefetch import Prefetcher
from megabert.train.step import NonFiniteSteps, StepOutput, TrainStep
from megabert.train.telemetry import Telemetry, hardware
from megabert.utils.distributed import barrier, discover_env, init_distributed
from megabert.utils.logging import get_logger, setup_logging
from megabert.utils.rng import seed_everything

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# data_builder(cfg, dp_rank, dp_size, train_samples) -> object with train_batches(consumed_samples),
# valid_batches() and tokenizer.vocab_size (the megabert.data contract).
DataBuilder = Callable[[TrainConfig, int, int, int], Any]


class TrainerCallback(Protocol):
    def on_window_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """After each log window (metrics: the window's, named train/*), before any evaluation or save of that
        step. Time spent here is left out of the run's clock."""


@dataclass
class TrainState:
    """What a checkpoint needs beyond the engine: where the run is, in steps, samples and time."""

    step: int = 0
    consumed_samples: int = 0
    elapsed_seconds: float = 0.0
    skipped_steps: int = 0
    hardware: list[str] = field(default_factory=list)  # what it trained on ("1 x cpu"), once per change across resumes


def default_data_builder(cfg: TrainConfig, dp_rank: int, dp_size: int, train_samples: int):
    from megabert.data import build_mlm_data

    return build_mlm_data(cfg.data, seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, dp_rank=dp_rank,
                          dp_size=dp_size, train_samples=train_samples)


def compile_wanted(parallel: ParallelConfig, device: torch.device) -> tuple[bool, str]:
    """Whether the trainer compiles the model (parallel.compile: true, false or null for this rule), and why. The
    rule compiles only where compiling was measured faster: on a GPU, without tensor parallelism, ZeRO 0-2."""
    if parallel.compile is not None:
        return parallel.compile, f"parallel.compile is {str(parallel.compile).lower()}"
    if device.type != "cuda":
        return False, f"parallel.compile null compiles on a GPU only (device {device.type})"
    if parallel.tensor_parallel_size > 1:
        return False, ("parallel.compile null keeps tensor-parallel models eager (compiled, they train alike but "
                       "have not been timed; true compiles them)")
    if parallel.zero_stage == 3:
        return False, "parallel.compile null keeps ZeRO-3 eager (its parameter gathering cannot be compiled)"
    return True, "parallel.compile null compiles on a GPU (ZeRO 0-2, no tensor parallelism)"


def prepare_batch(batch: dict, model_cfg, pin: bool) -> tuple[dict[str, int], PackedInputs]:
    """A micro-batch's counts (tokens, FLOPs' inputs) and its packed model inputs, page-locked for a GPU: what the
    prefetch thread hands the loop."""
    packed = pack_inputs(batch, model_cfg)
    return M.batch_counts(batch, model_cfg.sparse_mlm_head), packed.pin_memory() if pin else packed


class Trainer:
    def __init__(self, cfg: TrainConfig, data_builder: Optional[DataBuilder] = None,
                 callbacks: Sequence[TrainerCallback] = ()):
        self.cfg = cfg
        self.env = discover_env()
        setup_logging(self.env.rank)
        self.ds_config = preflight(cfg, self.env, check_data=data_builder is None)
        self.data_builder = data_builder or default_data_builder
        self.callbacks = list(callbacks)
        self.engine = None
        self._last_window: dict[str, Any] = {}  # the metrics of the latest log window, for the run's summary

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, model, data, engine, resume. Called by train(); separate so tools can reuse it."""
        cfg, env = self.cfg, self.env
        if cfg.parallel.device == "cpu" or not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        self.device = init_distributed(env, cfg.parallel.backend, cfg.parallel.device)
        self.rank, self.world_size, self.is_main = env.rank, env.world_size, env.rank == 0
        seed_everything(cfg.seed)  # identical initial weights on every rank

        from megabert.model.bert import MosaicBertForMaskedLM

        model = MosaicBertForMaskedLM(cfg.model)
        self.mpu, self.dp_rank, self.dp_size = None, env.rank, env.world_size
        if cfg.parallel.tensor_parallel_size > 1:
            ParallelGroups, parallelize_model = tensor_parallel_api()
            self.mpu = ParallelGroups(tensor_parallel_size=cfg.parallel.tensor_parallel_size, model_cfg=cfg.model)
            model = parallelize_model(model, self.mpu)
            self.dp_rank, self.dp_size = self.mpu.get_data_parallel_rank(), self.mpu.get_data_parallel_world_size()
        # Dropout differs across data-parallel replicas; the ranks of one tensor-parallel group share a stream.
        seed_everything(cfg.seed + 1 + self.dp_rank)

        self.accum = cfg.grad_accumulation_steps(self.dp_size)
        self.data = self._build_data()
        vocab = self.data.tokenizer.vocab_size
        if vocab > cfg.model.vocab_size:
            raise ConfigError(f"the tokenizer has {vocab} tokens but model.vocab_size is {cfg.model.vocab_size}; "
                              f"set model.vocab_size to {-(-vocab // 64) * 64} (a multiple of 64)")

        from megabert.parallel.deepspeed_config import initialize
        from megabert.train.optimizer import build_optimizer, build_scheduler

        model.to(self.device)
        compiled, why = compile_wanted(cfg.parallel, self.device)
        if self.is_main:
            log.info("model %s: %s", "compiled" if compiled else "eager", why)
        if compiled:
            from megabert.model.compile import compile_model

            compile_model(model, backend="inductor" if self.device.type == "cuda" else "aot_eager")
        self.optimizer = build_optimizer(model, cfg.optim)
        self.engine = initialize(model, self.optimizer, build_scheduler(self.optimizer, cfg.schedule), self.ds_config,
                                 mpu=self.mpu, flat_gradients=cfg.parallel.flat_gradients)

        self.checkpoints = CheckpointManager(cfg.checkpoint, self.rank, self.world_size)
        self.state, saved = TrainState(), {}
        resume = resolve_resume(cfg.checkpoint)
        if resume is not None:
            saved = self.checkpoints.load(self.engine, resume)
            self.state = TrainState(saved["step"], saved["consumed_samples"], saved.get("elapsed_seconds", 0.0),
                                    saved.get("skipped_steps", 0), saved.get("hardware", []))
            log.info("resumed from %s at step %d (%d samples consumed)", resume, self.state.step,
                     self.state.consumed_samples)
        elif cfg.checkpoint.init_from:
            self._init_weights_from(cfg.checkpoint.init_from)
        here = hardware(self.device, self.world_size)
        if self.state.hardware[-1:] != [here]:  # a fresh start, or a resume on other hardware
            self.state.hardware.append(here)
        # A count recorded in the checkpoint is kept (and set as schedule.total_steps here), else measured.
        self.budget = budget_for_run(cfg.schedule, saved.get(BUDGET_KEY), agree=max_over_ranks(self.device))
        if self.budget is not None and self.budget.budget_changed() and self.is_main:
            log.warning("schedule.budget_minutes changed since the checkpoint: the run keeps the step count fixed "
                        "for the recorded budget (%d steps)", self.budget.total_steps)

        out = Path(cfg.output_dir)
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            (out / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2) + "\n")
        self.writer = M.MetricsWriter(out, cfg.logging.tensorboard, cfg.logging.wandb_project, to_dict(cfg),
                                      enabled=self.is_main, resume_step=self.state.step)
        peak_flops = M.measure_peak_flops(self.device)
        self.telemetry = Telemetry(cfg, self.writer, self.device, self.world_size, peak_flops, self.state.step,
                                   self.is_main)
        self.validator = Validator(cfg, self.data, self.device, self.world_size,
                                   self.mpu.tp_group if self.mpu is not None else None)
        self.step = TrainStep(self.engine, self.optimizer, self.device, self.accum, self.world_size)
        self.nonfinite = NonFiniteSteps(cfg.logging.max_nonfinite_steps, self.state.skipped_steps)
        log.info("launcher %s: world %d (data parallel %d x tensor parallel %d), micro batch %d x %d "
                 "accumulation = global %d; device %s, ZeRO %d, %s; peak matmul %.4g TFLOP/s per device",
                 env.launcher, self.world_size, self.dp_size, cfg.parallel.tensor_parallel_size,
                 cfg.micro_batch_size, self.accum, cfg.global_batch_size, self.device, cfg.parallel.zero_stage,
                 cfg.parallel.precision, peak_flops / 1e12)

    def _build_data(self):
        """Rank 0 builds (and caches) the sample indices first; the others then read the cache."""
        train_samples = self.cfg.schedule.total_steps * self.cfg.global_batch_size
        if self.rank != 0:
            barrier()
        data = self.data_builder(self.cfg, self.dp_rank, self.dp_size, train_samples)
        if self.rank == 0:
            barrier()
        return data

    def _init_weights_from(self, source: str) -> None:
        from megabert.model.pretrained import load_state_dict

        state = load_state_dict(source)
        missing, unexpected = self.engine.module.load_state_dict(state, strict=False)
        log.info("initialised weights from %s (missing %s, unexpected %s)", source, missing, unexpected)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Runs to schedule.total_steps (or until a stop signal); returns a summary of the run."""
        if self.engine is None:
            self.setup()
        st, schedule = self.state, self.cfg.schedule  # a budget may change schedule.total_steps as the run goes
        if st.step >= schedule.total_steps and (self.budget is None or self.budget.fixed):
            return self._already_finished()
        with contextlib.ExitStack() as stack:
            stop = stack.enter_context(StopSignals(lambda: self.checkpoints.write_failed))
            batches = stack.enter_context(contextlib.closing(self.train_batches()))
            stack.callback(self.writer.close)
            stack.callback(self.telemetry.close)
            stack.callback(self.checkpoints.close)  # the last pruning; after an exception the save in flight
            stack.enter_context(GarbageCollection())
            self.engine.train()
            if self.budget is not None:
                self.telemetry.set_total(self.budget.start(st.step, time.perf_counter()))
            while st.step < schedule.total_steps:
                start = time.perf_counter()
                out = self.step(st.step + 1, batches, stop)
                self.nonfinite.record(out.flags)
                self._advance(time.perf_counter() - start)
                self._record_budget()
                self._report(out, time.perf_counter() - start)
                if self.validator.due(st.step):
                    self.telemetry.exclude(self._evaluate()["eval_seconds"])
                if out.flags.stop:
                    return self._stop(out.flags.stop)
                self.checkpoints.maybe_save(self.engine, st.step, self._checkpoint_contents,
                                            last_step=st.step == schedule.total_steps)
            self.nonfinite.record(self.step.read_pending(st.step))  # the last step's, when read a step late
            st.skipped_steps = self.nonfinite.skipped
            return self._finish()

    def train_batches(self) -> Prefetcher:
        """The training micro-batches from the data position on, as (counts, PackedInputs), prepared and
        page-locked on a thread up to data.prefetch_depth micro-batches ahead."""
        prepare = functools.partial(prepare_batch, model_cfg=self.cfg.model, pin=self.device.type == "cuda")
        return Prefetcher(self.data.train_batches(consumed_samples=self.state.consumed_samples), prepare,
                          depth=self.cfg.data.prefetch_depth, device=self.device)

    def _advance(self, seconds: float) -> None:
        st = self.state
        st.step += 1
        st.consumed_samples += self.cfg.global_batch_size
        st.elapsed_seconds += seconds
        st.skipped_steps = self.nonfinite.skipped

    def _record_budget(self) -> None:
        """Tells the budget a step ended; once it fixes the count (schedule.total_steps, which the lr schedule
        reads), the next step's lr is recomputed from it and the progress bar gets its end."""
        if self.budget is None:
            return
        fixed = self.budget.record(self.state.step, time.perf_counter())
        if fixed is not None:
            refresh_lr(self.engine.lr_scheduler)
            self.telemetry.set_total(fixed)
            if self.is_main:
                log.info("%s", self.budget.fix_message())

    def _report(self, out: StepOutput, seconds: float) -> None:
        """Counts the step into the window; after a window, the callbacks (their time is off the clock)."""
        metrics = self.telemetry.step_done(self.state.step, out, seconds, self.state, self.engine)
        if metrics is None:
            return
        self._last_window = {k.split("/", 1)[1]: v for k, v in metrics.items()}
        if not self.callbacks:
            return
        start = time.perf_counter()
        for callback in self.callbacks:
            callback.on_window_end(self, metrics)
        self.telemetry.exclude(time.perf_counter() - start)

    def _evaluate(self) -> dict[str, float]:
        result = self.validator.run(self.engine)
        if self.is_main:
            self.writer.write(self.state.step, result)
            accuracy = result["eval/accuracy"]
            log.info("step %d eval: loss %.4f, accuracy %s (%d masked tokens)", self.state.step, result["eval/loss"],
                     "n/a" if accuracy is None else f"{accuracy:.4f}", result["eval/masked_tokens"])
        return {k.replace("/", "_"): v for k, v in result.items()}

    def _state_dict(self) -> dict[str, Any]:
        budget = {BUDGET_KEY: self.budget.state_dict()} if self.budget is not None else {}
        return {**asdict(self.state), "zero_stage": self.cfg.parallel.zero_stage, **budget}

    def _checkpoint_contents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a checkpoint holds besides the engine's state: the trainer's state and the run config."""
        return self._state_dict(), to_dict(self.cfg)

    def _save_now(self) -> None:
        """A checkpoint of the current step (unless it is the one already saved), published before returning."""
        if self.checkpoints.due(self.state.step, last_step=True):
            self.checkpoints.save(self.engine, self.state.step, *self._checkpoint_contents())
        self.checkpoints.wait()

    def _stop(self, signum: int) -> dict[str, Any]:
        if signum == WRITE_FAILED:
            self.checkpoints.wait()  # raises CheckpointWriteError on every rank, naming the cause
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
        log.warning("signal %s received: saving a checkpoint at step %d and exiting", name, self.state.step)
        self._save_now()
        return {**self._last_window, "stopped_by_signal": True, "step": self.state.step}

    def _finish(self) -> dict[str, Any]:
        """After the last step: the final checkpoint published, the summary, a last evaluation, the export."""
        self._save_now()  # the final checkpoint is published (the export reads it)
        summary = {**self._last_window, **self.telemetry.run_summary()}
        if self.budget is not None:  # the estimate against the actual end
            summary.update(self.budget.summary(self.state.step))
            if self.is_main:
                log.info("%s", self.budget.report(self.state.step))
        summary.update(self._evaluate() if self.cfg.logging.eval_interval else {})
        summary.update(step=self.state.step, stopped_by_signal=False, hardware=" then ".join(self.state.hardware))
        train_samples = getattr(self.data, "num_train_samples", 0)
        if train_samples:  # how often the run saw its training split (a small corpus is seen many times)
            summary["epochs"] = self.state.consumed_samples / train_samples
        self._export()
        if self.is_main:
            self.writer.write(self.state.step, {f"final/{k}": v for k, v in summary.items()})
        return summary

    def _already_finished(self) -> dict[str, Any]:
        """A run started again after it reached schedule.total_steps: nothing is trained or rewritten; the model
        is exported only if its directory is missing."""
        log.info("this run already finished at step %d (schedule.total_steps %d); nothing to train. Raise "
                 "schedule.total_steps to train further, or use a new checkpoint.dir for a new run",
                 self.state.step, self.cfg.schedule.total_steps)
        if not (Path(self.cfg.output_dir) / "model" / "config.json").is_file():
            self._export()
        self.writer.close()
        self.telemetry.close()
        return {"step": self.state.step, "stopped_by_signal": False, "already_finished": True}

    def _export(self) -> None:
        if self.cfg.parallel.tensor_parallel_size > 1:
            ckpt = Path(self.cfg.checkpoint.dir) / step_dir_name(self.state.step)
            log.info("tensor-parallel run: export with python tools/convert_checkpoint.py merge-tp %s %s/model",
                     ckpt, self.cfg.output_dir)
            return
        if self.is_main:
            from megabert.checkpoint.export import export_checkpoint

            out = export_checkpoint(self.cfg.checkpoint.dir, Path(self.cfg.output_dir) / "model")
            log.info("exported the final model to %s (megabert's format: fine-tune it with tools/run_glue.py --model "
                     "%s; for transformers / sentence-transformers: python tools/convert_checkpoint.py to-hf %s "
                     "<dir> [--sentence-transformers])", out, out, out)
        barrier()


WRITE_FAILED = 255
"""The stop code of a rank whose background checkpoint write failed (above every signal number)."""


class StopSignals:
    """Why the loop should stop, as a number the step all-reduces (max) so that every rank stops at the same step:
    a SIGTERM / SIGUSR1 received, or WRITE_FAILED when `write_failed()` says this rank's background checkpoint
    write failed (a full disk should stop the run now, not at the next save)."""

    def __init__(self, write_failed: Callable[[], bool] = lambda: False) -> None:
        self.received = 0
        self._write_failed = write_failed
        self._previous: dict = {}

    @property
    def signal(self) -> int:
        return WRITE_FAILED if self._write_failed() else self.received

    def __enter__(self) -> "StopSignals":
        self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def _on_signal(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

