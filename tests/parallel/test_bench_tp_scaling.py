"""tools/bench_tp_scaling.py under torchrun (2 CPU ranks, gloo): TP = 1 and 2 run, and its --check passes."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_tp_scaling_smoke(tmp_path, repo_root):
    out = tmp_path / "scaling.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tools/bench_tp_scaling.py", "--tiny", "--device", "cpu", "--tp", "1", "2", "--steps", "1", "--warmup", "1",
         "--batch-per-gpu", "2", "--seq-len", "16", "--check", "--json-out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["tp"], r["dp"]) for r in report["results"]] == [(1, 2), (2, 1)]
    for r in report["results"]:
        assert r["loss_rel_err"] < 1e-5 and r["grad_max_rel_err"] < 1e-4
