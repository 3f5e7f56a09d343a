"""The median over runs on several machines: the figure the benchmark protocol reports for a speed claim.

    python -m benchmarks.pool_runs run1.json run2.json run3.json [--markdown out.md]

Each input is one `python -m benchmarks.compiled_step --json-out` file, each from a fresh machine. Per (model,
dist, system): the median real tokens/s, MFU and step time over the runs, and the median of each run's own ratio
against hf-compile (a ratio is taken inside one process, never across runs), with its range and the number of runs.
Runs of different commits, GPU models or torch versions measure different things: they are refused, naming the
difference. Two runs from one machine are refused too (not a fresh machine each), unless --same-host-ok. A machine
is known by its GPU's UUID (host names repeat: lent machines and containers often share one), by its host name in
runs that did not record the UUID.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional

MUST_AGREE = ("commit", "device", "torch", "triton")


class PoolError(ValueError):
    """Runs that cannot be pooled, and why."""


def load_run(path: str | Path) -> dict:
    run = json.loads(Path(path).read_text())
    if "rows" not in run or "environment" not in run:
        raise PoolError(f"{path}: not a benchmarks.compiled_step --json-out file (no 'rows' / 'environment')")
    run["path"] = str(path)
    return run


def check_poolable(runs: list[dict], same_host_ok: bool = False) -> None:
    """Raises PoolError when the runs differ in what they measure, or repeat a machine."""
    if len(runs) < 2:
        raise PoolError(f"{len(runs)} run(s): a median over runs needs at least 2 (the protocol asks for 3)")
    for key in MUST_AGREE:
        seen = {run["environment"].get(key) for run in runs}
        if len(seen) > 1:
            detail = ", ".join(f"{run['path']}: {run['environment'].get(key)}" for run in runs)
            raise PoolError(f"the runs differ in {key} ({detail}); pool runs of one tree on one kind of GPU")
    if None in {run["environment"].get("commit") for run in runs}:
        raise PoolError("a run has no commit recorded (run benchmarks.compiled_step from a git checkout)")
    machines = [machine(run) for run in runs]
    repeated = {m for m in machines if m is not None and machines.count(m) > 1}
    if repeated and not same_host_ok:
        raise PoolError(f"{', '.join(sorted(repeated))} ran more than one of these runs: the protocol "
                        f"asks for a fresh machine per run (--same-host-ok to pool them anyway)")


def machine(run: dict) -> Optional[str]:
    """Which machine ran `run`: its GPU's UUID, else (older runs) its host name, else None (unknown)."""
    env = run["environment"]
    if env.get("gpu_uuid"):
        return f"GPU {env['gpu_uuid']}"
    return f"host {env['host']}" if env.get("host") else None


def pool(runs: list[dict]) -> list[dict]:
    """One row per (model, dist, system) measured in every run, in the first run's order."""
    measured: dict[tuple, list[tuple[dict, Optional[float]]]] = defaultdict(list)
    for run in runs:
        for row in run["rows"]:
            key = (row["model"], row["dist"], row["system"])
            measured[key].append((row, run.get("ratios_vs_hf_compile", {}).get(" ".join(key))))
    out = []
    for key, entries in measured.items():
        if len(entries) != len(runs):
            continue  # a row some run did not reach (its time limit): a median over fewer runs would mislead
        rows = [row for row, _ in entries]
        ratios = [ratio for _, ratio in entries if ratio is not None]
        out.append({"model": key[0], "dist": key[1], "system": key[2], "runs": len(rows),
                    "real_tokens_per_s": statistics.median(r["real_tokens_per_s"] for r in rows),
                    "mfu": statistics.median(r["mfu"] for r in rows),
                    "step_ms": statistics.median(r["step_ms"] for r in rows),
                    "vs_hf_compile": statistics.median(ratios) if len(ratios) == len(rows) else None,
                    "vs_hf_compile_range": (min(ratios), max(ratios)) if len(ratios) == len(rows) else None})
    return out


def markdown(runs: list[dict], pooled: list[dict]) -> str:
    env = runs[0]["environment"]
    lines = [f"Median of {len(runs)} runs ({env['device']}, torch {env['torch']}, commit {env['commit']}; "
             f"{', '.join(run['environment'].get('date_utc', '?') for run in runs)} UTC)", "",
             "| model | dist | system | real tokens/s | MFU | step ms | vs HF + compile (range) |",
             "|---|---|---|---|---|---|---|"]
    for r in pooled:
        ratio = (f"{r['vs_hf_compile']:.2f}x ({r['vs_hf_compile_range'][0]:.2f}-{r['vs_hf_compile_range'][1]:.2f})"
                 if r["vs_hf_compile"] is not None else "-")
        lines.append(f"| {r['model']} | {r['dist']} | {r['system']} | {r['real_tokens_per_s']:,.0f} | "
                     f"{100 * r['mfu']:.1f}% | {r['step_ms']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="benchmarks.compiled_step --json-out files, one per machine")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--same-host-ok", action="store_true", help="pool runs that share a machine")
    args = parser.parse_args(argv)
    runs = [load_run(path) for path in args.runs]
    try:
        check_poolable(runs, args.same_host_ok)
    except PoolError as e:
        parser.error(str(e))
    pooled = pool(runs)
    table = markdown(runs, pooled)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return pooled


if __name__ == "__main__":
    main()
