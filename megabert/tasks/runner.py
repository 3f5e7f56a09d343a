"""Plans and runs fine-tuning jobs: every (task, seed), in two rounds, one job per GPU.

Round 1 runs tasks that start from the pretrained model; round 2 the tasks whose recipe says init_from (RTE,
MRPC and STS-B start from MNLI, as MosaicBERT): they start from the round-1 run of that task whose headline
score is the median over its seeds. With several GPUs each job is a subprocess pinned to one GPU through
CUDA_VISIBLE_DEVICES (`python -m megabert.tasks.worker job.json`); otherwise jobs run one after another here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from megabert.tasks.data import TaskData, load_task_data
from megabert.tasks.finetune import RESULT_NAME, Job, check_model_dir, run_job
from megabert.tasks.recipe import Recipe
from megabert.tasks.results import flatten_metrics
from megabert.tasks.task import TaskError, TaskSpec

log = logging.getLogger(__name__)
_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # so workers import this megabert, installed or not


def check_tasks(specs: Sequence[TaskSpec]) -> dict[str, TaskData]:
    """Reads and checks every task's files before anything trains; task name -> its data (labels resolved)."""
    return {spec.name: load_task_data(spec) for spec in specs}


def plan_round(specs: Sequence[TaskSpec], recipes: dict[str, Recipe], model_dir: str, output_dir: str,
               device: str, init_dirs: Optional[dict[str, str]] = None, save_tasks: Sequence[str] = ()) -> list[Job]:
    jobs = []
    for spec in specs:
        recipe = recipes[spec.name]
        init_dir = (init_dirs or {}).get(spec.name)
        for seed in recipe.seeds:
            jobs.append(Job(task=spec.to_dict(), recipe=recipe.to_dict(), seed=int(seed), model_dir=str(model_dir),
                            output_dir=str(Path(output_dir) / spec.name / f"seed_{seed}"), init_dir=init_dir,
                            save_model=spec.name in save_tasks, device=device))
    return jobs


def run_serial(jobs: Sequence[Job], data: Optional[dict[str, TaskData]] = None) -> list[dict]:
    """One job after another in this process, reusing the task data already read (every seed shares it)."""
    return [run_job(job, (data or {}).get(job.task["name"])) for job in jobs]


def worker_env(slot: str, num_slots: int) -> dict[str, str]:
    """The environment of a worker subprocess pinned to one slot (a CUDA_VISIBLE_DEVICES value): workers share
    the host's cores (as torchrun does, none claims them all) and import this megabert, installed or not."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, num_slots)))
    return {**os.environ, "CUDA_VISIBLE_DEVICES": slot, "OMP_NUM_THREADS": threads,
            "PYTHONPATH": os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")]))}


def run_parallel(jobs: Sequence[Job], slots: Sequence[str], poll_s: float = 0.5) -> list[dict]:
    """Runs jobs as worker subprocesses, one per slot; a slot is a CUDA_VISIBLE_DEVICES value ('0', '1', ...)."""
    pending, running, results, failures = list(jobs), {}, {}, []
    free = list(slots)
    while pending or running:
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)
            job_file = Path(job.output_dir) / "job.json"
            job_file.write_text(json.dumps(job.to_dict(), indent=2) + "\n")
            env = worker_env(slot, len(slots))
            log_file = open(Path(job.output_dir) / "worker.log", "w")
            process = subprocess.Popen([sys.executable, "-m", "megabert.tasks.worker", str(job_file)], env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT)
            running[process] = (job, slot, log_file)
            log.info("started %s (GPU %s)", job.output_dir, slot)
        time.sleep(poll_s)
        for process in [p for p in running if p.poll() is not None]:
            job, slot, log_file = running.pop(process)
            log_file.close()
            free.append(slot)
            result_file = Path(job.output_dir) / RESULT_NAME
            if process.returncode != 0 or not result_file.is_file():
                tail = (Path(job.output_dir) / "worker.log").read_text()[-2000:]
                failures.append(f"{job.output_dir} (exit {process.returncode}):\n{tail}")
            else:
                results[job.output_dir] = json.loads(result_file.read_text())
    if failures:
        raise RuntimeError("fine-tuning job(s) failed:\n" + "\n".join(failures))
    return [results[job.output_dir] for job in jobs]


def run_jobs(jobs: Sequence[Job], slots: Optional[Sequence[str]] = None,
             data: Optional[dict[str, TaskData]] = None) -> list[dict]:
    """Serial in this process unless two or more slots (GPUs) are given."""
    if not jobs:
        return []
    if slots and len(slots) > 1:
        return run_parallel(jobs, slots)
    return run_serial(jobs, data)


def median_run(results: Sequence[dict]) -> dict:
    """The run whose headline metric (first metric, first split) is the median over seeds (lower middle)."""
    def headline(result: dict) -> float:
        return next(iter(flatten_metrics(result["metrics"]).values()))

    ranked = sorted(results, key=headline)
    return ranked[(len(ranked) - 1) // 2]


def run_tasks(specs: Sequence[TaskSpec], recipes: dict[str, Recipe], model_dir: str, output_dir: str,
              device: str = "auto", slots: Optional[Sequence[str]] = None,
              init_checkpoints: Optional[dict[str, str]] = None) -> list[dict]:
    """All seeds of all tasks, round 1 then round 2; returns every run's result."""
    data = check_tasks(specs)
    for seq_len in sorted({recipes[spec.name].seq_len for spec in specs}):
        check_model_dir(model_dir, seq_len)
    specs = [data[spec.name].spec for spec in specs]
    if len(data) != len(specs):
        raise TaskError(f"task names must be unique, got {[s.name for s in specs]}")
    init_checkpoints = dict(init_checkpoints or {})
    names = {s.name for s in specs}
    round2 = [s for s in specs if recipes[s.name].init_from]
    round1 = [s for s in specs if not recipes[s.name].init_from]
    sources = {recipes[s.name].init_from for s in round2}
    for source in sources:
        if source not in names and source not in init_checkpoints:
            log.warning("%s is not among the tasks run and no checkpoint was given for it: tasks that start from "
                        "it start from the pretrained model instead", source)
    save_tasks = [s for s in sources if s in names]
    results = run_jobs(plan_round(round1, recipes, model_dir, output_dir, device, save_tasks=save_tasks), slots, data)
    for source in save_tasks:
        runs = [r for r in results if r["task"] == source]
        if not runs:
            raise TaskError(f"no results for {source}; cannot start the tasks that depend on it")
        init_checkpoints[source] = median_run(runs)["saved_model"]
    init_dirs = {s.name: init_checkpoints.get(recipes[s.name].init_from) for s in round2}
    results += run_jobs(plan_round(round2, recipes, model_dir, output_dir, device, init_dirs), slots, data)
    return results
