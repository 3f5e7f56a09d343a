"""benchmarks/trainer_ratio.py: trainer / plain per window pair of bench_trainer results, with its error bar."""

import json
import math

import pytest

from benchmarks.trainer_ratio import main, paired_ratio, window_pairs

RESULT = {"window_pairs": [[380_000, 400_000], [420_000, 400_000]]}


def test_pairs_are_read_from_a_result():
    assert window_pairs(RESULT) == [(380_000.0, 400_000.0), (420_000.0, 400_000.0)]
    assert window_pairs({}) == []


def test_the_ratio_is_the_geometric_mean_with_the_standard_error_of_the_log_ratios():
    r = paired_ratio([(380_000.0, 400_000.0), (420_000.0, 400_000.0)])
    logs = [math.log(0.95), math.log(1.05)]
    assert r["ratio"] == pytest.approx(math.sqrt(0.95 * 1.05))
    assert r["se"] == pytest.approx(r["ratio"] * abs(logs[0] - logs[1]) / 2)  # stdev of 2 / sqrt(2)
    assert r["pairs"] == 2 and r["trainer_slower_share"] == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        paired_ratio([(1.0, 1.0)])


def test_runs_are_reported_one_by_one_and_pooled(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(RESULT))
    slower = {"window_pairs": [[360_000, 400_000], [420_000, 400_000]]}
    (tmp_path / "b.json").write_text(json.dumps(slower))
    (tmp_path / "none.json").write_text(json.dumps({"window_pairs": []}))
    results = main([str(tmp_path / name) for name in ("a.json", "b.json", "none.json")])
    assert set(results) == {str(tmp_path / "a.json"), str(tmp_path / "b.json"), "pooled"}
    assert results["pooled"]["pairs"] == 4
    assert results[str(tmp_path / "b.json")]["ratio"] < results["pooled"]["ratio"] < results[str(tmp_path / "a.json")]["ratio"]
    assert "skipped" in capsys.readouterr().out
