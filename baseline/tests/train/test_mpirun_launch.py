"""mpirun starts the trainer (ranks and rendezvous from MPI through mpi4py), here with bf16 and ZeRO-2, and the
non-finite-loss guard: a NaN on one rank skips the step on every rank; K NaN steps in a row stop the run."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.train.launch import REPO, RUNNER, child_env, explain, tiny_config


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (pip install mpich mpi4py)")
def test_mpirun_two_ranks_bf16_zero2_skips_nonfinite_steps_then_stops(tmp_path):
    pytest.importorskip("mpi4py")
    cfg = tiny_config(tmp_path / "run")
    cfg["parallel"].update(precision="bf16", zero_stage=2)
    cfg["schedule"]["total_steps"] = 10
    cfg["checkpoint"]["save_interval"] = 0
    cfg["logging"]["max_nonfinite_steps"] = 2
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    # rank 1 alone is NaN at step 3 (skipped everywhere); both at 6 and 7 (two in a row: stop)
    env = child_env(MEGABERT_TEST_NAN="1:3,0:6,1:6,0:7")
    proc = subprocess.run(["mpirun", "-np", "2", sys.executable, str(RUNNER), "--config", str(tmp_path / "c.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0, explain(proc)
    assert "launcher mpi: world 2 (data parallel 2" in proc.stderr, explain(proc)
    assert "step 3: non-finite loss" in proc.stderr and "update skipped (1 in a row)" in proc.stderr
    assert "2 consecutive steps had a non-finite loss" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r for r in records if "train/loss" in r}
    # the host reads step 7's flags at the end of step 8 (never waiting for the device) and stops before logging it
    assert sorted(curve) == [1, 2, 3, 4, 5, 6, 7]
    assert curve[3]["train/skipped_steps"] == 0 and curve[4]["train/skipped_steps"] == 1  # counted a step late
    assert curve[5]["train/loss"] < curve[1]["train/loss"]
    assert all(r["train/loss"] == r["train/loss"] for r in curve.values())  # the logged loss is never NaN
