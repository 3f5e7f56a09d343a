"""Where does the GPU wait? Busy time and idle gaps of the device in a torch.profiler Chrome trace.

A training step is host-bound wherever the device has nothing queued: between two kernels the GPU idles while
the host is still deciding what to launch (Python, a lock, a synchronisation it asked for). The trace shows both
sides; this module merges the device's activity (kernels, copies, memsets) into busy intervals and lists the
idle gaps between them, each with the host work that was running during it, so two loops (the trainer's step
and the bare step) can be compared by how long their device waited and for what.

    python -m benchmarks.device_timeline trace.json.gz [--top 10]

`python -m benchmarks.trainer --profile` writes such traces and prints this report for the trainer's step and the bare one.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATEGORIES = ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation", "python_function")


@dataclass
class Gap:
    start_us: float
    duration_us: float
    host_work: list[str] = field(default_factory=list)  # host events inside the gap, longest first


@dataclass
class Timeline:
    span_us: float  # first device activity to the last
    busy_us: float  # union of device activity
    gaps: list[Gap]  # idle stretches between device activity, longest first

    @property
    def busy_fraction(self) -> float:
        return self.busy_us / self.span_us if self.span_us else 0.0

    @property
    def idle_us(self) -> float:
        return self.span_us - self.busy_us


def load_trace(path: str | Path) -> list[dict]:
    """The events of a Chrome trace as torch.profiler exports it (.json or .json.gz)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def _complete(events: list[dict], categories: tuple[str, ...]) -> list[tuple[float, float, str]]:
    """(start, end, name) of complete ('X') events of the given categories, sorted by start (microseconds)."""
    out = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), str(e.get("name", "")))
           for e in events if e.get("ph") == "X" and e.get("cat") in categories]
    return sorted(out)


def device_timeline(events: list[dict], min_gap_us: float = 5.0, attribute: int = 20) -> Timeline:
    """Device busy time over its active span, and its idle gaps (>= min_gap_us), the `attribute` longest of them
    with the host work that ran during each."""
    device = _complete(events, DEVICE_CATEGORIES)
    if not device:
        return Timeline(0.0, 0.0, [])
    busy, gaps = 0.0, []
    current_start, current_end = device[0][0], device[0][1]
    for start, end, _ in device[1:]:
        if start > current_end:  # an idle stretch: the device finished everything queued
            busy += current_end - current_start
            if start - current_end >= min_gap_us:
                gaps.append(Gap(current_end, start - current_end))
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    span = current_end - device[0][0]
    gaps.sort(key=lambda g: -g.duration_us)
    _attribute(gaps[:attribute], _complete(events, HOST_CATEGORIES))
    return Timeline(span, busy, gaps)


def _attribute(gaps: list[Gap], host: list[tuple[float, float, str]], keep: int = 6) -> None:
    """Names each gap's host work: the host events overlapping it, by how much of the gap they cover."""
    for gap in gaps:
        gap_end = gap.start_us + gap.duration_us
        overlap: Counter = Counter()
        for start, end, name in host:
            if start >= gap_end:
                break
            covered = min(end, gap_end) - max(start, gap.start_us)
            if covered > 0:
                overlap[name] += covered
        gap.host_work = [f"{name} ({us:.0f} us)" for name, us in overlap.most_common(keep)]


def summarize(timeline: Timeline, label: str, steps: int, top: int = 5) -> list[str]:
    """A few lines: busy fraction, idle per step, the longest gaps and what the host did in them."""
    if not timeline.span_us:
        return [f"{label}: no device activity in the trace"]
    lines = [f"{label}: device busy {100 * timeline.busy_fraction:.1f}% of {timeline.span_us / 1e3:.1f} ms; idle "
             f"{timeline.idle_us / 1e3 / max(steps, 1):.2f} ms per step in {len(timeline.gaps)} gaps"]
    for gap in timeline.gaps[:top]:
        lines.append(f"  gap {gap.duration_us / 1e3:7.2f} ms: {', '.join(gap.host_work) or 'no host event'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", nargs="+")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace, for the idle time per step")
    args = parser.parse_args(argv)
    for path in args.trace:
        print("\n".join(summarize(device_timeline(load_trace(path)), str(path), args.steps, args.top)))


if __name__ == "__main__":
    main()
