"""Run a study: is MosaicBERT better than BERT on this corpus at these budgets, and what does each modification buy?

    python tools/run_study.py --config configs/study/tiny.json              # CPU demo, a few minutes
    python tools/run_study.py --config configs/study/base_h200.json         # one worker per visible GPU
    python tools/run_study.py --config study.json --gpus 0,1,2,3            # these GPUs only
    python tools/run_study.py --config study.json --dry-run                 # the runs and their commands
    python tools/run_study.py --config study.json --report-only             # results from the runs so far
    python tools/run_study.py --config study.json --time-limit-minutes 55   # within a 1-hour allocation

Every (variant, budget) is a normal pretraining run with --schedule.budget_minutes, then an evaluation on the
study's masked-LM set and, when the study names one, a fine-tuning of the downstream task. Rerunning the command
skips what is finished and resumes what was interrupted; several runners (other nodes on a shared file system)
can work on one study at once. Writes results.json, results.md, pareto.png and ablation.png in the study's
output_dir, and appends the runner's lines to study.log there. docs/STUDY.md explains the study file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from megabert.config import ConfigError
from megabert.study.evaluation import EvaluationError
from megabert.study.plots import PlotError
from megabert.study.queue import find_slots
from megabert.study.report import markdown, write_report
from megabert.study.runner import StudyRunner
from megabert.study.spec import StudyError, load_study

log = logging.getLogger("run_study")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="study JSON (configs/study/*.json)")
    p.add_argument("--gpus", help="comma-separated GPU ids, one worker each (default: every visible GPU)")
    p.add_argument("--cpu-workers", type=int, default=1, help="workers when no GPU is visible (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their pretraining commands")
    p.add_argument("--report-only", action="store_true", help="write the results of the runs finished so far")
    p.add_argument("--time-limit-minutes", type=float, default=None,
                   help="start only runs that end within this many minutes, and stop cleanly when they are up "
                        "(an allocation's time limit; rerun to continue)")
    p.add_argument("--run-overhead-minutes", type=float, default=2.0,
                   help="time a run needs besides its budget (start-up, compilation, evaluation, fine-tuning) "
                        "until a run of this study has measured it; then the largest measured (default 2)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        study = load_study(args.config)
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        slots = find_slots(gpus, args.cpu_workers)
        deadline = None if args.time_limit_minutes is None else time.monotonic() + 60.0 * args.time_limit_minutes
        runner = StudyRunner(study, slots, deadline=deadline, overhead_minutes=args.run_overhead_minutes)
        runs = study.runs()
        if args.dry_run:
            for run in runs:
                print(f"{run.id}: {shlex.join(runner.pretrain_command(run))}")
            print(f"{len(runs)} runs; workers: {', '.join(s.name for s in slots)}")
            return 0
        eval_meta = runner.prepare()
        failures: dict[str, str] = {}
        if not args.report_only:
            with _study_log(study.output_dir):
                todo = [r.id for r in runs if not runner.is_done(r)]
                log.info("study %s: %d runs, %d to do, workers %s", study.name, len(runs), len(todo),
                         ", ".join(s.name for s in slots))
                failures = _run_until_stopped(runner)
        results = write_report(study, eval_meta, failures)
    except (StudyError, ConfigError, EvaluationError, PlotError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"wrote {study.output_dir / 'results.md'} and {study.output_dir / 'results.json'}")
    for run_id, error in failures.items():
        print(f"run {run_id} failed: {error}", file=sys.stderr)
    pending = [r["run"] for r in results["runs"] if r["status"] != "done"]
    if pending and not args.report_only:
        print(f"{len(pending)} run(s) not done: {', '.join(pending)}; rerun the same command to continue",
              file=sys.stderr)
    return 1 if failures or (pending and not args.report_only) else 0


@contextlib.contextmanager
def _study_log(output_dir: Path) -> Iterator[None]:
    """The runner's lines also go to output_dir/study.log, appended by every sitting and every runner (host named), so
    the record of what started, resumed, stopped and finished where stays with the study's results."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output_dir / "study.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s {socket.gethostname()} %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger("run_study"), logging.getLogger("megabert.study")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # whatever the root logger lets through, the file gets every line
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def _run_until_stopped(runner: StudyRunner) -> dict[str, str]:
    """The queue, with SIGINT/SIGTERM turned into a clean stop: running pretraining saves its checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        return runner.run()

    def stop(signum, frame) -> None:
        log.warning("signal %d: stopping (running pretraining saves a checkpoint; rerun to continue)", signum)
        runner.processes.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
