#!/usr/bin/env python3
"""The trainer's throughput against its bare step, per window pair, with its uncertainty, over bench_trainer logs.

tools/bench_trainer.py --interleave times a block of bare steps right after each of the trainer's log windows, on
the same global batches. Each (window, next bare block) pair is one paired measurement of trainer / bare; the
machine's drift cancels within a pair but its short-term noise does not (single blocks vary by ~5% on an H200
host). This pools the pairs: the geometric mean of the ratios and its standard error, per log and over all logs
given, so that "does the trainer keep 95% of the bare step" is answered with an error bar rather than by one run.
The first window of each run (warm-up) is left out.

    python tools/trainer_ratio.py docs/logs/run2*_bench_trainer.log
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from pathlib import Path

WINDOW_LINE = re.compile(r"^step\s+\d+:\s+([\d,]+) real tok/s \(then bare\s+([\d,]+)")


def window_pairs(log_text: str) -> list[tuple[float, float]]:
    """(trainer tokens/s, bare tokens/s of the block after it) for every window of a bench_trainer log that has a
    bare block after it, the first (warm-up) window left out."""
    pairs = [(float(m.group(1).replace(",", "")), float(m.group(2).replace(",", "")))
             for m in map(WINDOW_LINE.match, log_text.splitlines()) if m]
    return pairs[1:]


def paired_ratio(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Geometric mean of trainer / bare over the pairs, its standard error (from the log-ratios' spread; a
    ratio's error bar is symmetric in log space) and the share of pairs where the trainer was the slower."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 window pairs, got {len(pairs)}")
    logs = [math.log(trainer / bare) for trainer, bare in pairs]
    mean, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    return {"ratio": math.exp(mean), "se": math.exp(mean) * se, "pairs": len(logs),
            "trainer_slower_share": sum(x < 0 for x in logs) / len(logs)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="bench_trainer logs (made with --interleave)")
    args = parser.parse_args(argv)
    results, pooled = {}, []
    for path in args.logs:
        pairs = window_pairs(path.read_text())
        if len(pairs) < 2:
            print(f"{path}: fewer than 2 window pairs (not an --interleave run?); skipped")
            continue
        pooled += pairs
        results[str(path)] = paired_ratio(pairs)
    if len(pooled) >= 2:
        results["pooled"] = paired_ratio(pooled)
    for name, r in results.items():
        print(f"{name:48} trainer / bare {r['ratio']:.3f} +- {r['se']:.3f} (standard error, {r['pairs']} window "
              f"pairs; trainer slower in {100 * r['trainer_slower_share']:.0f}%)")
    return results


if __name__ == "__main__":
    main()
