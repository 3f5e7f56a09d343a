"""Runs a study: the evaluation set once, every run through the shared queue, then the report.

Each run is three stages, each a subprocess on the worker's GPU, each skipped when its output is there and fresh:
  1. pretrain   `python pretrain_bert.py --config BASE <overrides>`: a normal training run with the run's budget,
                resumed from its own checkpoints when it was interrupted; done when the trainer exported the model
                and wrote its final summary (copied to pretrain.json);
  2. evaluate   `python -m megabert.study.evaluation`: the exported model on the study's evaluation set
                (evaluation.json);
  3. downstream `python tools/run_glue.py --task-name ... --train-file ...`: the user-task path, fine-tuned
                from the exported model (downstream/results.json), when the study names a downstream task.
The commands are written to the run's commands.sh, so any stage can be rerun by hand.

A run that started is held to the settings it started with: its config.json (the trainer's resolved config) must
match what the study file resolves to now, where it lives aside. A study file edited after its runs began (another
lr, say) would otherwise report the old runs under the new settings; the runner refuses, names the runs and the
settings that changed, and leaves their directories for the user to move or delete.

With the study's keep_models false, a finished run's exported model and checkpoints are deleted and the stamp its
results were made with is kept (model_removed.json): the run stays finished, and a study directory small enough to
copy carries the finished runs to another machine or a later sitting, where the same command goes on with the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from megabert.config import to_dict
from megabert.study.evaluation import build_eval_set
from megabert.study.queue import Claims, Processes, Slot, StageError, Stopped, run_queue
from megabert.study.spec import Run, Study, StudyError, override_args

log = logging.getLogger(__name__)

PRETRAIN = ["-m", "pretrain_bert"]  # pretrain_bert.py, installed or run from the checkout
RUN_GLUE = ["-m", "megabert.cli.run_glue"]  # tools/run_glue.py
EVAL_SET = "eval_set.npz"
MODEL_REMOVED = "model_removed.json"  # the stamp of a run's model deleted after its results were recorded
RUN_TIMING = "timing.json"  # a run's wall clock, all stages, when it trained in one go: its overhead beyond the budget
RUN_CONFIG = "config.json"  # the resolved config the trainer wrote when the run started (or resumed)
LOCATION_KEYS = ("output_dir", "checkpoint.dir")  # where a run lives, not what it trains: a study may move
BUDGET_SET_KEYS = ("schedule.total_steps",)  # every study run has a budget, which fixes its step count; a resumed
# run records the fixed count in its config.json, so a count other than the planned one is not an edit


class StudyRunner:
    """Runs a study's queue. With `deadline` (a time.monotonic() value) it starts a run only if its budget plus its
    overhead (start-up, compilation, evaluation, fine-tuning) ends before it -- or, for a run longer than the whole
    sitting, if at least half the sitting is left -- and at the deadline stops what is running the way a signal
    does (pretraining saves a checkpoint): an allocation's time limit ends the sitting cleanly, and the next sitting
    continues, an interrupted run from its checkpoint. The overhead is the largest this study has measured (each
    run trained in one go records its own, in this sitting or an earlier one), `overhead_minutes` until then."""

    def __init__(self, study: Study, slots: Sequence[Slot], processes: Optional[Processes] = None,
                 deadline: Optional[float] = None, overhead_minutes: float = 2.0):
        self.study = study
        self.slots = list(slots)
        self.processes = processes or Processes(len(self.slots))
        self.eval_set = study.output_dir / EVAL_SET
        self.eval_meta: Optional[dict] = None
        self.deadline, self.overhead_minutes = deadline, overhead_minutes
        self.sitting_seconds = None if deadline is None else deadline - time.monotonic()
        self.postponed: set[str] = set()

    # ------------------------------------------------------------------------------------------------ study
    def prepare(self) -> dict:
        """The study's directory, its plan and its evaluation set (built on the first call, checked after), once
        every run that started is known to have started with the settings the study file asks for now."""
        changed = {run.id: diff for run in self.study.runs() if (diff := changed_settings(self.study, run))}
        if changed:
            lines = [f"  {run_id} ({self.study.output_dir / 'runs' / run_id}): " + "; ".join(
                f"{key} {old!r} -> {new!r}" for key, (old, new) in diff.items()) for run_id, diff in changed.items()]
            raise StudyError(f"{self.study.source}: {len(changed)} run(s) started with other settings than the study "
                             f"file asks for now (recorded -> now):\n" + "\n".join(lines) + "\nTheir results would "
                             f"be reported under the new settings. Move or delete those run directories to train "
                             f"them again, or restore the study file.")
        self.study.output_dir.mkdir(parents=True, exist_ok=True)
        plan = [{"run": r.id, "variant": r.variant.name, "role": r.variant.role, "switch": r.variant.switch,
                 "budget_minutes": r.budget_minutes, "directory": str(r.directory),
                 "command": self.pretrain_command(r)} for r in self.study.runs()]
        (self.study.output_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
        cfg = self.study.run_config(self.study.runs()[0])
        ev = self.study.evaluation
        self.eval_meta = build_eval_set(cfg, self.eval_set, ev.samples, ev.mask_prob, ev.seed)
        return self.eval_meta

    def run(self) -> dict[str, str]:
        """Every run not yet done; returns {run id: error} of the runs that failed."""
        if self.eval_meta is None:
            self.prepare()
        claims = Claims(self.study.output_dir / "locks")
        timer = None
        if self.deadline is not None:
            timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._time_is_up)
            timer.daemon = True
            timer.start()
        try:
            return run_queue(self.study.runs(), key=lambda r: r.id, is_done=self.is_done, work=self.work,
                             slots=self.slots, claims=claims, processes=self.processes, fits=self.fits)
        finally:
            if timer is not None:
                timer.cancel()

    def fits(self, run: Run) -> bool:
        """Whether to start `run` before the deadline: it ends in time (its budget, unless pretrained already, plus
        the overhead), or it is longer than the whole sitting and half of the sitting is still left."""
        if self.deadline is None:
            return True
        minutes = self.run_overhead_minutes() + (run.budget_minutes if pretrain_result(run) is None else 0.0)
        left = self.deadline - time.monotonic()
        if 60.0 * minutes <= left or (60.0 * minutes > self.sitting_seconds and left >= self.sitting_seconds / 2):
            return True
        if run.id not in self.postponed:
            self.postponed.add(run.id)
            log.info("%s: not started, %.1f min would end after the time limit", run.id, minutes)
        return False

    def run_overhead_minutes(self) -> float:
        """The most time a run of this study has needed besides its budget (its RUN_TIMING), else the default."""
        measured = [t["overhead_minutes"] for r in self.study.runs()
                    if (t := read_json(r.directory / RUN_TIMING)) is not None and "overhead_minutes" in t]
        return max(measured) if measured else self.overhead_minutes

    def _time_is_up(self) -> None:
        log.warning("time limit reached: stopping (running pretraining saves a checkpoint; rerun to continue)")
        self.processes.stop()

    # ------------------------------------------------------------------------------------------------ a run
    def is_done(self, run: Run) -> bool:
        return (pretrain_result(run) is not None and self._evaluation_fresh(run)
                and (self.study.downstream is None or self._downstream_fresh(run)))

    def work(self, run: Run, slot: Slot) -> None:
        removed = read_json(run.directory / MODEL_REMOVED)
        if removed is not None and pretrain_result(run) is not None:
            raise StageError(f"{run.id}: its model was deleted after its results were recorded (keep_models false), "
                             f"and the study's evaluation set or downstream task has changed since; delete "
                             f"{run.directory} to train it again")
        commands = {"pretrain": self.pretrain_command(run), "evaluate": self.evaluate_command(run, slot)}
        if self.study.downstream:
            commands["downstream"] = self.downstream_command(run, slot)
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / "commands.sh").write_text(
            "#!/usr/bin/env bash\n# the stages of this run, as the study runner ran them (from the study's cwd)\n"
            + "".join(f"{shlex.join(c)}\n" for c in commands.values()))
        needs_pretraining = pretrain_result(run) is None
        began, trains_in_one_go = time.monotonic(), needs_pretraining and not has_checkpoint(run)
        if needs_pretraining:
            log.info("%s: pretraining on %s", run.id, slot.name)
            self.processes.run(commands["pretrain"], run.directory / "logs" / "pretrain.log", slot)
            self._record_pretrain(run)
        if not self._evaluation_fresh(run):
            log.info("%s: evaluating on %s", run.id, slot.name)
            self.processes.run(commands["evaluate"], run.directory / "logs" / "evaluate.log", slot)
        if self.study.downstream and not self._downstream_fresh(run):
            log.info("%s: fine-tuning %s on %s", run.id, self.study.downstream.name, slot.name)
            self.processes.run(commands["downstream"], run.directory / "logs" / "downstream.log", slot)
            (run.directory / "downstream.json").write_text(json.dumps(
                {"model_file": model_stamp(run), "task": self._downstream_task()}) + "\n")
        if trains_in_one_go:  # every stage from scratch in this call: its time beyond the budget is the overhead
            seconds = time.monotonic() - began
            (run.directory / RUN_TIMING).write_text(json.dumps(
                {"seconds": round(seconds, 1), "budget_minutes": run.budget_minutes,
                 "overhead_minutes": round(max(0.0, seconds / 60.0 - run.budget_minutes), 2)}) + "\n")
        if not self.study.keep_models:
            remove_model(run)
        log.info("%s: done", run.id)

    def pretrain_command(self, run: Run) -> list[str]:
        return [sys.executable, *PRETRAIN, "--config", self.study.base_config, *override_args(run.overrides)]

    def evaluate_command(self, run: Run, slot: Slot) -> list[str]:
        return [sys.executable, "-m", "megabert.study.evaluation", "--model", str(run.directory / "model"),
                "--eval-set", str(self.eval_set), "--output", str(run.directory / "evaluation.json"),
                "--device", slot.device, "--batch-size", str(self.study.evaluation.batch_size)]

    def downstream_command(self, run: Run, slot: Slot) -> list[str]:
        task = self.study.downstream
        command = [sys.executable, *RUN_GLUE, "--model", str(run.directory / "model"), "--output",
                   str(run.directory / "downstream"), "--task-name", task.name, "--train-file", task.train_file,
                   "--dev-file", task.dev_file, "--text-columns", ",".join(task.text_columns), "--label-column",
                   task.label_column, "--device", slot.device]
        if task.labels_file:
            labels = [line.strip() for line in Path(task.labels_file).read_text().splitlines() if line.strip()]
            command += ["--labels", ",".join(labels)]
        return command + list(task.args)

    def _record_pretrain(self, run: Run) -> None:
        """The trainer's final summary, once it says the run reached its end (not a stop) and exported."""
        summary = final_summary(run.directory / "metrics.jsonl")
        if summary is None or summary.get("stopped_by_signal", True):
            if self.processes.stopping.is_set():
                raise Stopped(f"{run.id}: pretraining stopped; its checkpoint resumes it")
            raise StageError(f"{run.id}: pretrain_bert.py exited without finishing (no final summary in "
                             f"{run.directory / 'metrics.jsonl'}); see {run.directory / 'logs' / 'pretrain.log'}")
        if not (run.directory / "model" / "model.safetensors").is_file():
            raise StageError(f"{run.id}: no exported model in {run.directory / 'model'} (a tensor-parallel run "
                             f"needs tools/convert_checkpoint.py merge-tp first)")
        summary["command"] = self.pretrain_command(run)
        (run.directory / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")

    def _evaluation_fresh(self, run: Run) -> bool:
        """evaluation.json is of this model and of this evaluation set."""
        result = read_json(run.directory / "evaluation.json")
        meta = self.eval_meta or read_json(self.eval_set.with_suffix(".json")) or {}
        return bool(result and result.get("model_file") == model_stamp(run)
                    and result.get("masked_positions_sha256") == meta.get("masked_positions_sha256"))

    def _downstream_fresh(self, run: Run) -> bool:
        """downstream/results.json is of this model and of the task (files, columns, recipe) the study names now; a
        marker from before tasks were recorded counts for its model alone."""
        marker = read_json(run.directory / "downstream.json")
        task = self._downstream_task()
        return bool(marker and marker.get("model_file") == model_stamp(run)
                    and marker.get("task", task) == task
                    and (run.directory / "downstream" / "results.json").is_file())

    def _downstream_task(self) -> Optional[dict]:
        """The downstream task as its marker records it: one definition for writing and for comparing."""
        return json.loads(json.dumps(dataclasses.asdict(self.study.downstream))) if self.study.downstream else None


# ---------------------------------------------------------------------------------------------------------------
# Reading a run's files
# ---------------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def pretrain_result(run: Run) -> Optional[dict]:
    return read_json(run.directory / "pretrain.json")


def model_stamp(run: Run) -> Optional[dict]:
    """Size and modification time of the run's exported weights: an evaluation of other weights is stale. For a
    model deleted after its results were recorded, the stamp it had then."""
    path = run.directory / "model" / "model.safetensors"
    if not path.is_file():
        removed = read_json(run.directory / MODEL_REMOVED)
        return removed.get("model_file") if isinstance(removed, dict) else None
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def changed_settings(study: Study, run: Run) -> dict[str, tuple[Any, Any]]:
    """{setting: (recorded, planned)} for every setting (dotted, as overrides name them) whose value in the config
    the run started with differs from the study's resolved config for it; {} for a run that has not started (or
    started before runs recorded their config). LOCATION_KEYS do not count, nor settings only one side has (a
    config field added or retired by a megabert release in between), nor the settings the run's budget sets
    (BUDGET_SET_KEYS)."""
    recorded = read_json(run.directory / RUN_CONFIG)
    if not isinstance(recorded, dict):
        return {}
    old, new = _flatten(recorded), _flatten(json.loads(json.dumps(to_dict(study.run_config(run)))))
    return {key: (old[key], new[key]) for key in sorted(set(old) & set(new))
            if key not in LOCATION_KEYS + BUDGET_SET_KEYS and old[key] != new[key]}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-4}} -> {'optim.lr': 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def has_checkpoint(run: Run) -> bool:
    """Whether an earlier, interrupted pretraining of `run` left a checkpoint to resume from."""
    directory = run.directory / "checkpoints"
    return directory.is_dir() and any(directory.iterdir())


def remove_model(run: Run) -> None:
    """Deletes a finished run's exported model and checkpoints, keeping the stamp its results were made with. The
    stamp is written first: a crash in between leaves a run that is still finished."""
    stamp = model_stamp(run)
    if stamp is None:
        return
    (run.directory / MODEL_REMOVED).write_text(json.dumps({"model_file": stamp}) + "\n")
    for name in ("model", "checkpoints"):
        shutil.rmtree(run.directory / name, ignore_errors=True)
    log.info("%s: results recorded; model and checkpoints deleted (keep_models false)", run.id)


def final_summary(metrics_path: Path) -> Optional[dict]:
    """The trainer's last `final/*` line of metrics.jsonl, its keys without the prefix (None if none)."""
    if not metrics_path.is_file():
        return None
    found = None
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if any(k.startswith("final/") for k in record):
            found = {k[len("final/"):]: v for k, v in record.items() if k.startswith("final/")}
    return found
