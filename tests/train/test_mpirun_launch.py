"""mpirun starts the trainer: ranks and rendezvous come from MPI (mpi4py), here with bf16 and ZeRO-2."""

import shutil
import subprocess
import sys

import pytest

from tests.train.launch import REPO, RUNNER, child_env, explain, losses, tiny_config


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (pip install mpich mpi4py)")
def test_mpirun_two_ranks_bf16_zero2(tmp_path):
    pytest.importorskip("mpi4py")
    cfg = tiny_config(tmp_path / "run")
    cfg["parallel"].update(precision="bf16", zero_stage=2)
    cfg["schedule"]["total_steps"] = 6
    cfg["checkpoint"]["save_interval"] = 0
    (tmp_path / "c.json").write_text(__import__("json").dumps(cfg))
    proc = subprocess.run(["mpirun", "-np", "2", sys.executable, str(RUNNER), "--config", str(tmp_path / "c.json")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    assert "launcher mpi: world 2 (data parallel 2" in proc.stderr
    curve = {step: v[0] for step, v in losses(tmp_path / "run").items()}
    assert sorted(curve) == list(range(1, 7)) and curve[6] < curve[1]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
