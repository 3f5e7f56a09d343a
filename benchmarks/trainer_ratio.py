"""The trainer's throughput against the plain step, per window pair, with its uncertainty, over several runs.

benchmarks/trainer.py times a block of plain steps right after each of the trainer's log windows, on the same
data. Each (window, next block) pair is one paired measurement of trainer / plain; the machine's drift cancels
within a pair but its short-term noise does not (single blocks vary by a few percent on an H200 host). This
pools the pairs of the runs' bench_trainer.json files: the geometric mean of the ratios and its standard error,
per run and over all, so that "does the trainer keep 95% of the plain step" is answered with an error bar.

    python -m benchmarks.trainer_ratio runs/*/bench_trainer.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def window_pairs(result: dict) -> list[tuple[float, float]]:
    """(trainer tokens/s, plain tokens/s of the block after it) of one bench_trainer result (the start-up window
    already left out by the bench)."""
    return [(float(trainer), float(plain)) for trainer, plain in result.get("window_pairs", [])]


def paired_ratio(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Geometric mean of trainer / plain over the pairs, its standard error (from the log-ratios' spread; a
    ratio's error bar is symmetric in log space) and the share of pairs where the trainer was the slower."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 window pairs, got {len(pairs)}")
    logs = [math.log(trainer / plain) for trainer, plain in pairs]
    mean, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    return {"ratio": math.exp(mean), "se": math.exp(mean) * se, "pairs": len(logs),
            "trainer_slower_share": sum(x < 0 for x in logs) / len(logs)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench_trainer.json files")
    args = parser.parse_args(argv)
    results, pooled = {}, []
    for path in args.results:
        pairs = window_pairs(json.loads(path.read_text()))
        if len(pairs) < 2:
            print(f"{path}: fewer than 2 window pairs; skipped")
            continue
        pooled += pairs
        results[str(path)] = paired_ratio(pairs)
    if len(pooled) >= 2:
        results["pooled"] = paired_ratio(pooled)
    for name, r in results.items():
        print(f"{name:48} trainer / plain {r['ratio']:.3f} +- {r['se']:.3f} (standard error, {r['pairs']} window "
              f"pairs; trainer slower in {100 * r['trainer_slower_share']:.0f}%)")
    return results


if __name__ == "__main__":
    main()
