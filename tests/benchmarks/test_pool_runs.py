"""Pooling compiled_step runs from several machines: medians per row, each run's ratio taken inside that run, and
runs that measure different things (another commit, GPU, torch) or share a host refused with the reason."""

import json

import pytest

from benchmarks.pool_runs import PoolError, check_poolable, load_run, main, markdown, pool


def _run(host, megabert, hf, commit="abc1234", device="NVIDIA H100 80GB HBM3", extra_rows=()):
    rows = [{"model": "base", "dist": "c4-128", "system": "megabert-compiled", "real_tokens_per_s": megabert,
             "mfu": megabert / 1e6, "step_ms": 1e3 * 30_000 / megabert},
            {"model": "base", "dist": "c4-128", "system": "hf-compile", "real_tokens_per_s": hf, "mfu": hf / 1e6,
             "step_ms": 1e3 * 30_000 / hf}, *extra_rows]
    return {"environment": {"commit": commit, "device": device, "torch": "2.11.0", "triton": "3.6.0",
                            "host": host, "date_utc": "2026-12-06 05:00"},
            "rows": rows, "path": host,
            "ratios_vs_hf_compile": {f"base c4-128 {r['system']}": r["real_tokens_per_s"] / hf for r in rows[:2]}}


def test_medians_per_row_and_the_median_of_each_runs_own_ratio():
    # Machine c is fast for both peers: its ratio is 1.2 like b's, although its megabert figure is the highest.
    runs = [_run("a", 500_000, 500_000), _run("b", 540_000, 450_000), _run("c", 600_000, 500_000)]
    rows = {r["system"]: r for r in pool(runs)}
    assert rows["megabert-compiled"]["real_tokens_per_s"] == 540_000
    assert rows["megabert-compiled"]["vs_hf_compile"] == pytest.approx(1.2)  # median of 1.0, 1.2, 1.2
    assert rows["megabert-compiled"]["vs_hf_compile_range"] == (pytest.approx(1.0), pytest.approx(1.2))
    assert rows["hf-compile"]["real_tokens_per_s"] == 500_000 and rows["megabert-compiled"]["runs"] == 3
    assert "| base | c4-128 | megabert-compiled | 540,000 | 54.0% |" in markdown(runs, pool(runs))


def test_a_row_missing_from_one_run_is_left_out():
    large = {"model": "large", "dist": "c4-128", "system": "megabert-compiled", "real_tokens_per_s": 1.0,
             "mfu": 0.5, "step_ms": 1.0}
    runs = [_run("a", 500_000, 500_000, extra_rows=[large]), _run("b", 540_000, 450_000)]
    assert {(r["model"], r["system"]) for r in pool(runs)} == {("base", "megabert-compiled"), ("base", "hf-compile")}


@pytest.mark.parametrize("field, value", [("commit", "def5678"), ("device", "NVIDIA H200"), ("torch", "2.12.0")])
def test_runs_that_measure_different_things_are_refused_naming_the_difference(field, value):
    other = _run("b", 540_000, 450_000)
    other["environment"][field] = value
    with pytest.raises(PoolError, match=f"differ in {field}"):
        check_poolable([_run("a", 500_000, 500_000), other])


def test_one_host_twice_is_not_a_fresh_machine_unless_allowed():
    runs = [_run("a", 500_000, 500_000), _run("a", 540_000, 450_000)]
    with pytest.raises(PoolError, match="host a ran more than one.*fresh machine"):
        check_poolable(runs)
    check_poolable(runs, same_host_ok=True)
    with pytest.raises(PoolError, match="at least 2"):
        check_poolable(runs[:1])


def test_machines_are_told_apart_by_their_gpu_where_host_names_repeat():
    # Lent machines all answer to the host name "vm": their GPUs tell them apart, and one GPU twice is refused.
    runs = [_run("vm", 500_000, 500_000), _run("vm", 540_000, 450_000)]
    runs[0]["environment"]["gpu_uuid"], runs[1]["environment"]["gpu_uuid"] = "GPU-1111", "GPU-2222"
    check_poolable(runs)
    runs[1]["environment"]["gpu_uuid"] = "GPU-1111"
    with pytest.raises(PoolError, match="GPU GPU-1111 ran more than one"):
        check_poolable(runs)


def test_the_command_reads_json_files_and_writes_the_table(tmp_path, capsys):
    paths = []
    for i, run in enumerate([_run("a", 500_000, 500_000), _run("b", 540_000, 450_000), _run("c", 600_000, 500_000)]):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps({k: v for k, v in run.items() if k != "path"}))
    assert load_run(paths[0])["path"] == str(paths[0])
    pooled = main([str(p) for p in paths] + ["--markdown", str(tmp_path / "pooled.md")])
    assert len(pooled) == 2 and "Median of 3 runs" in (tmp_path / "pooled.md").read_text()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PoolError, match="not a benchmarks.compiled_step"):
        load_run(tmp_path / "bad.json")
