"""Helpers for tests that start the trainer in fresh processes (one process, or torchrun with N)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "train" / "run_synthetic.py"


def tiny_config(out: Path, **top) -> dict:
    """A 2-layer model on synthetic data, fp32 on CPU, a loss line every step, no evaluation."""
    cfg = {
        "model": {"vocab_size": 128, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                  "hidden_dropout": 0.1},
        "data": {"seq_len": 32},
        "optim": {"lr": 0.003},
        "schedule": {"total_steps": 12, "warmup_fraction": 0.1},
        "parallel": {"zero_stage": 1, "precision": "fp32", "device": "cpu"},
        "checkpoint": {"dir": str(out / "ckpt"), "save_interval": 4, "keep_last": 2, "resume": "auto"},
        "logging": {"log_interval": 1, "eval_interval": 0, "eval_iters": 2, "tensorboard": False},
        "global_batch_size": 16, "micro_batch_size": 4, "seed": 3, "output_dir": str(out),
    }
    cfg.update(top)
    return cfg


def tiny_config_on_sample(tmp_path: Path, sample_corpus: dict, seq_len: int) -> Path:
    """tiny_config on the bundled sample corpus (its vocabulary needs 8192 rows), written to tmp_path/tiny.json."""
    cfg = tiny_config(tmp_path / "unused")
    cfg["model"]["vocab_size"] = 8192
    cfg["data"] = {**sample_corpus, "seq_len": seq_len}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "megabert-torch-extensions"))
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_trainer(cfg: dict, workdir: Path, *args: str, nproc: int = 1, env: dict | None = None,
                timeout: int = 400) -> subprocess.CompletedProcess:
    path = workdir / f"config_{abs(hash(json.dumps(cfg, sort_keys=True)))}.json"
    path.write_text(json.dumps(cfg))
    if nproc == 1:
        cmd = [sys.executable, str(RUNNER), "--config", str(path), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(_free_port()), str(RUNNER), "--config", str(path), *args]
    return subprocess.run(cmd, cwd=REPO, env=child_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def summaries(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line[len("SUMMARY "):]) for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]


def losses(output_dir: Path) -> dict[int, list[float]]:
    """step -> every train/loss logged for it (a resumed run logs some steps twice)."""
    out: dict[int, list[float]] = {}
    for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out.setdefault(record["step"], []).append(record["train/loss"])
    return out


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
