"""tools/device_timeline.py: device busy time, idle gaps and the host work during them, from a Chrome trace."""

import gzip
import json
import sys

import pytest

from tests.train.launch import REPO

sys.path.insert(0, str(REPO / "tools"))
from device_timeline import device_timeline, load_trace, summarize  # noqa: E402


def _event(cat, ts, dur, name="k"):
    return {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": name}


TRACE = [
    _event("kernel", 0, 100), _event("kernel", 50, 100),  # overlapping: busy 0-150
    _event("gpu_memcpy", 400, 50),  # idle 150-400 (250 us)
    _event("kernel", 460, 40),  # idle 450-460 (10 us)
    _event("cpu_op", 140, 200, "aten::narrow"), _event("cuda_runtime", 350, 40, "cudaDeviceSynchronize"),
    _event("cpu_op", 0, 30, "aten::mm"),  # before the gap: not attributed
]


def test_busy_time_is_the_union_of_device_activity_and_gaps_are_what_lies_between():
    timeline = device_timeline(TRACE, min_gap_us=5.0)
    assert timeline.span_us == 500 and timeline.busy_us == 150 + 50 + 40
    assert [g.duration_us for g in timeline.gaps] == [250, 10]  # longest first
    assert timeline.busy_fraction == pytest.approx(240 / 500)


def test_each_gap_names_the_host_work_that_ran_during_it_by_overlap():
    gap = device_timeline(TRACE).gaps[0]
    assert gap.host_work == ["aten::narrow (190 us)", "cudaDeviceSynchronize (40 us)"]
    assert "aten::mm" not in " ".join(gap.host_work)


def test_short_gaps_are_counted_as_idle_but_not_listed():
    timeline = device_timeline(TRACE, min_gap_us=20.0)
    assert [g.duration_us for g in timeline.gaps] == [250]
    assert timeline.idle_us == 260


def test_a_gzipped_trace_loads_and_a_trace_without_device_work_says_so(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": TRACE}, f)
    assert load_trace(path) == TRACE
    assert summarize(device_timeline([_event("cpu_op", 0, 5)]), "cpu", steps=1) == ["cpu: no device activity in the trace"]
    lines = summarize(device_timeline(TRACE), "bare", steps=2)
    assert lines[0].startswith("bare: device busy 48.0%") and "0.13 ms per step" in lines[0]
