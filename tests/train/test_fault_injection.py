"""Fault injection with the shipped data settings (a DataLoader worker, dropout 0.1, asynchronous checkpoints):
the trainer is killed again and again -- SIGKILL at random moments, some inside a save; SIGTERM and SIGUSR1 --
and resumed each time. The run that comes out of it must equal an uninterrupted one bit for bit: every logged
loss (each step logged once), the final weights, and each restart redoes at most the steps since the newest
published checkpoint."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megabert.checkpoint.manager import latest_checkpoint, read_trainer_state
from tests.train.launch import REPO, RUNNER, child_env, explain, losses

TOTAL_STEPS, SAVE_INTERVAL = 24, 3


def _config(out: Path, sample_corpus: dict) -> Path:
    cfg = {
        "model": {"vocab_size": 8192, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "hidden_dropout": 0.1},
        "data": {**sample_corpus, "seq_len": 32, "num_workers": 1},
        "optim": {"lr": 0.003},
        "schedule": {"total_steps": TOTAL_STEPS, "warmup_fraction": 0.1},
        "parallel": {"zero_stage": 1, "precision": "fp32", "device": "cpu"},
        "checkpoint": {"dir": str(out / "ckpt"), "save_interval": SAVE_INTERVAL, "keep_last": 2},
        "logging": {"log_interval": 1, "eval_interval": 0, "tensorboard": False},
        "global_batch_size": 8, "micro_batch_size": 4, "seed": 11, "output_dir": str(out),
    }
    path = out.parent / f"{out.name}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def _start(config: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), "--config", str(config), "--real-data"], cwd=REPO,
                            env=child_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "train/loss" in record:
            steps.append(record["step"])
    return steps


def _interrupt(config: Path, out: Path, at_step: int, how: signal.Signals, env: dict | None = None) -> str:
    """Runs until `at_step` is logged, sends `how`; returns the process's stderr. SIGKILL must kill it; SIGTERM
    and SIGUSR1 must let it save and exit 0."""
    proc = _start(config, env)
    deadline = time.time() + 300
    while proc.poll() is None and (max(_logged_steps(out), default=0) < at_step) and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {at_step}:\n{proc.communicate()[1][-3000:]}"
    proc.send_signal(how)
    stdout, stderr = proc.communicate(timeout=300)
    if how == signal.SIGKILL:
        assert proc.returncode == -9
    else:
        assert proc.returncode == 0, f"{how.name} did not exit cleanly:\n{stderr[-4000:]}"
        assert f"signal {how.name} received" in stderr
    return stderr


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_and_stopped_again_and_again_the_run_equals_an_uninterrupted_one(tmp_path, sample_corpus):
    straight = tmp_path / "straight"
    proc = subprocess.run([sys.executable, str(RUNNER), "--config", str(_config(straight, sample_corpus)),
                           "--real-data"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    reference = losses(straight)
    assert sorted(reference) == list(range(1, TOTAL_STEPS + 1))

    out = tmp_path / "interrupted"
    config = _config(out, sample_corpus)
    rng = random.Random(7)
    # (step to interrupt after, how, extra env): SIGKILLs at random steps, one of them while a save is being
    # written (the writer held back 1 s, so the kill lands between the snapshot and the publish), then the two
    # stop signals.
    plan = [(rng.randint(2, 5), signal.SIGKILL, {}),
            (rng.randint(7, 9), signal.SIGKILL, {"MEGABERT_TEST_WRITE_DELAY": "0:1.0"}),
            (rng.randint(11, 14), signal.SIGTERM, {}),
            (rng.randint(15, 17), signal.SIGKILL, {}),
            (rng.randint(18, 20), signal.SIGUSR1, {})]
    for at_step, how, env in plan:
        before = latest_checkpoint(out / "ckpt")
        resumed_from = read_trainer_state(before)["step"] if before else 0
        _interrupt(config, out, at_step, how, env)
        newest = latest_checkpoint(out / "ckpt")  # complete (its trainer state written last) and what `latest` names
        newest_step = read_trainer_state(newest)["step"] if newest is not None else 0
        assert newest is not None or max(_logged_steps(out)) < SAVE_INTERVAL + 2, "no checkpoint survived"
        if how != signal.SIGKILL:  # a stop signal saves the step it stopped at
            assert newest_step >= at_step
        # At most the steps since the newest published checkpoint are lost (and will be redone).
        lost = max(_logged_steps(out)) - newest_step
        assert lost <= SAVE_INTERVAL + 2, f"{how.name} at step {at_step}: {lost} steps after the newest checkpoint"
        assert newest_step >= resumed_from
    proc = _start(config)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-4000:]
    assert "resumed from" in stderr

    resumed = losses(out)
    assert sorted(resumed) == list(range(1, TOTAL_STEPS + 1))
    for step, values in resumed.items():
        assert values == reference[step], f"step {step}: {values} != {reference[step]} (each step logged once)"
    straight_weights, final_weights = _weights(straight), _weights(out)
    assert straight_weights.keys() == final_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, final_weights[name]), name
