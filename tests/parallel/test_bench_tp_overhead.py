"""tools/bench_tp_overhead.py runs end to end (tiny model, CPU, few steps) and reports what the lead needs."""

import json
import subprocess
import sys


def test_bench_tp_overhead_smoke(tmp_path, repo_root):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "tools/bench_tp_overhead.py", "--tiny", "--device", "cpu", "--batch-size", "4",
         "--seq-len", "16", "--steps", "2", "--warmup", "1", "--rounds", "1", "--json-out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "TP code path overhead at TP=1" in result.stdout
    report = json.loads(out.read_text())
    assert report["steps_timed_per_model"] == 2
    assert set(report["median_step_ms"]) == {"plain", "tp1"}
    assert abs(report["first_loss"]["plain"] - report["first_loss"]["tp1"]) < 1e-2  # same function, bf16
