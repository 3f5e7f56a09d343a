"""tools/trainer_ratio.py: trainer / bare per window pair of bench_trainer --interleave logs, with its error bar."""

import math
import sys

import pytest

from tests.train.launch import REPO

sys.path.insert(0, str(REPO / "tools"))
from trainer_ratio import main, paired_ratio, window_pairs  # noqa: E402

LOG = """\
step    10:    200,000 real tok/s (then bare   400,000),  166 cudaMalloc calls
step    20:    380,000 real tok/s (then bare   400,000),    0 cudaMalloc calls
step    30:    420,000 real tok/s (then bare   400,000, fed   390,000, step   410,000),    0 cudaMalloc calls
step    40:    399,000 real tok/s,    0 cudaMalloc calls
trainer, to the end of the last step                     400,000
"""


def test_pairs_skip_the_warm_up_window_and_the_last_window_without_a_block():
    assert window_pairs(LOG) == [(380_000.0, 400_000.0), (420_000.0, 400_000.0)]


def test_the_ratio_is_the_geometric_mean_with_the_standard_error_of_the_log_ratios():
    r = paired_ratio([(380_000.0, 400_000.0), (420_000.0, 400_000.0)])
    logs = [math.log(0.95), math.log(1.05)]
    assert r["ratio"] == pytest.approx(math.sqrt(0.95 * 1.05))
    assert r["se"] == pytest.approx(r["ratio"] * abs(logs[0] - logs[1]) / 2)  # stdev of 2 / sqrt(2)
    assert r["pairs"] == 2 and r["trainer_slower_share"] == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        paired_ratio([(1.0, 1.0)])


def test_logs_are_reported_one_by_one_and_pooled(tmp_path, capsys):
    (tmp_path / "a.log").write_text(LOG)
    (tmp_path / "b.log").write_text(LOG.replace("380,000", "360,000"))
    (tmp_path / "none.log").write_text("no windows here\n")
    results = main([str(tmp_path / name) for name in ("a.log", "b.log", "none.log")])
    assert set(results) == {str(tmp_path / "a.log"), str(tmp_path / "b.log"), "pooled"}
    assert results["pooled"]["pairs"] == 4
    assert results[str(tmp_path / "b.log")]["ratio"] < results["pooled"]["ratio"] < results[str(tmp_path / "a.log")]["ratio"]
    assert "skipped" in capsys.readouterr().out
