"""tools/bench_tp_scaling.py under torchrun (2 CPU ranks, gloo): TP = 1 and 2 run, its --check passes, and both
TP sizes record the same bf16 losses from the same weights and batches."""

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
         "--batch-per-gpu", "2", "--seq-len", "16", "--check", "--loss-steps", "2", "--json-out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["tp"], r["dp"]) for r in report["results"]] == [(1, 2), (2, 1)]
    for r in report["results"]:
        assert r["loss_rel_err"] < 1e-5 and r["grad_max_rel_err"] < 1e-4
        assert len(r["losses"]) == 2 and r["global_batch"] == 4
        assert r["real_tokens_per_s"] == pytest.approx(2 * r["real_tokens_per_s_per_gpu"])
    tp2 = report["results"][1]
    assert tp2["loss_max_rel_diff_vs_tp1"] < 1e-3  # token-weighted loss: TP=1 x DP=2 == TP=2 x DP=1
    assert "TP=2 vs TP=1: largest relative loss difference" in result.stdout
