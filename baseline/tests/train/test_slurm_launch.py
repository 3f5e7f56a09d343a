"""examples/slurm/multi_node.sbatch, run here with stand-in `srun` and `scontrol` first on PATH: the stand-in
srun starts its tasks as local processes with SLURM's per-task variables, so the script's rendezvous, the
trainer's SLURM discovery and the preemption path (USR1 -> checkpoint -> requeue) run for real on 2 CPU ranks."""

import json
import os
import signal
import subprocess
import time

import pytest

from megabert.train.checkpoint import latest_checkpoint
from tests.train.launch import REPO, child_env, explain, tiny_config

FAKE_SRUN = r"""#!/usr/bin/env bash
# stand-in srun: start --ntasks local tasks with SLURM's per-task environment, forward USR1/TERM, wait for all
n=${SLURM_NTASKS:-1}
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in --ntasks=*) n=${1#*=} ;; esac
  shift
done
echo "srun $n tasks: $*" >> "$FAKE_SLURM_LOG"
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=$n SLURM_STEP_TASKS_PER_NODE=$n \
    SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST "$@" &
  pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
  while true; do
    wait "$p"; r=$?
    kill -0 "$p" 2>/dev/null && continue  # woken by a forwarded signal: keep waiting
    [[ $r -ne 0 ]] && rc=$r
    break
  done
done
exit $rc
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo 127.0.0.1 ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "scontrol $*" >> "$FAKE_SLURM_LOG" ;;
esac
"""


def slurm_env(tmp_path, config_path, job_id):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return child_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SLURM_LOG=str(tmp_path / "slurm.log"),
                     SLURM_JOB_ID=str(job_id), SLURM_NNODES="1", SLURM_JOB_NODELIST="127.0.0.1",
                     SLURM_SUBMIT_DIR=str(REPO), GPUS_PER_NODE="2", CONFIG=str(config_path),
                     TRAIN_SCRIPT="tests/train/run_synthetic.py")


@pytest.mark.slow
def test_multi_node_script_trains_two_ranks_and_requeues_on_preemption(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    cfg["schedule"]["total_steps"] = 100_000  # runs until preempted
    cfg["checkpoint"]["save_interval"] = 0
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(cfg))
    script = REPO / "examples" / "slurm" / "multi_node.sbatch"
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=slurm_env(tmp_path, config_path, 31337),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().count("train/loss") >= 2):
        assert proc.poll() is None and time.time() < deadline, explain(_finish(proc))
        time.sleep(1)
    proc.send_signal(signal.SIGUSR1)  # what SLURM does 300 s before the time limit
    done = _finish(proc)
    assert done.returncode == 0, explain(done)
    log = (tmp_path / "slurm.log").read_text()
    assert "srun 2 tasks" in log and "requeue 31337" in log
    assert "rendezvous 127.0.0.1:" + str(20000 + 31337 % 20000) in done.stdout
    assert "launcher slurm: world 2 (data parallel 2" in done.stderr  # both ranks found each other through SLURM's variables
    saved = latest_checkpoint(tmp_path / "run" / "ckpt")
    assert saved is not None and len(list((saved / "rng").iterdir())) == 2
    assert json.loads((saved / "trainer_state.json").read_text())["step"] >= 2


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
