"""tools/bench_tp_overhead.py runs end to end (tiny model, CPU, few steps) and reports what the lead needs."""

import importlib.util
import json


def test_bench_tp_overhead_smoke(tmp_path, repo_root, capsys):
    spec = importlib.util.spec_from_file_location("bench_tp_overhead", repo_root / "tools" / "bench_tp_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # in-process: a subprocess would re-import torch
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--batch-size", "4", "--seq-len", "16", "--steps", "2", "--warmup", "1",
                "--rounds", "1", "--json-out", str(out)])
    assert "TP code path overhead at TP=1" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["steps_timed_per_model"] == 2
    assert set(report["median_step_ms"]) == {"plain", "tp1"}
    assert abs(report["first_loss"]["plain"] - report["first_loss"]["tp1"]) < 1e-2  # same function, bf16
