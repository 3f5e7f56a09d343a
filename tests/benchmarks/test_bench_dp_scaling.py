"""benchmarks/dp_scaling.py: the weak-scaling arithmetic of its summary, and a 2-rank CPU run of the real engine."""

import json
import subprocess
import sys

import pytest

from tests.train.launch import _free_port, child_env, explain, tiny_config_on_sample


from benchmarks.dp_scaling import scaling_table


def _record(world: int, tokens_per_s: float, zero: int = 1, **extra) -> dict:
    return {"config": "configs/base.json", "zero_stage": zero, "precision": "bf16", "seq_len": 128,
            "micro_batch_size": 256, "accum": 1, "tensor_parallel_size": 1, "world_size": world,
            "global_batch_size": 256 * world, "median_step_ms": 100.0, "real_tokens_per_s": tokens_per_s,
            "real_tokens_per_s_per_gpu": tokens_per_s / world, "mfu": 0.4, "peak_memory_mib": 1000.0, **extra}


def test_scaling_efficiency_is_tokens_per_s_over_n_times_one_gpu():
    rows = scaling_table([_record(1, 100.0), _record(2, 190.0), _record(8, 100.0 * 8 * 0.5),
                          _record(2, 150.0, zero=2)]).splitlines()
    by_gpus = {(row.split("|")[2].strip(), row.split("|")[3].strip()): row for row in rows[2:]}
    assert "| 100.0% |" in by_gpus[("1", "1")]
    assert "| 95.0% |" in by_gpus[("1", "2")]
    assert "| 50.0% |" in by_gpus[("1", "8")]
    assert "n/a" in by_gpus[("2", "2")]  # ZeRO-2 has no one-GPU record to compare with


def test_a_repeated_measurement_replaces_the_earlier_one():
    table = scaling_table([_record(1, 100.0), _record(2, 100.0), _record(2, 180.0)])
    assert "| 90.0% |" in table and "| 50.0% |" not in table


@pytest.mark.slow
def test_two_cpu_ranks_report_each_zero_stage_with_the_job_wide_token_count(tmp_path, sample_corpus):
    from megabert.config import load_config
    from megabert.data import build_mlm_data

    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=32)
    out = tmp_path / "dp.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "benchmarks.dp_scaling", "--config", str(config),
           "--micro-batch-size", "3", "--accum", "2", "--steps", "1", "--rounds", "2", "--warmup", "1",
           "--json-out", str(out), "--parallel.device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    printed = [json.loads(l[len("BENCH_DP "):]) for l in proc.stdout.splitlines() if l.startswith("BENCH_DP ")]
    assert records == printed and [r["zero_stage"] for r in records] == [1, 2]
    # Every rank's batches are counted: the first global batch (3 x 2 ranks x 2 micro-steps = 12 samples)
    # built in one piece here has the same real tokens.
    train = load_config(config)
    whole = next(build_mlm_data(train.data, seed=train.seed, micro_batch_size=12).train_batches())
    for r in records:
        assert (r["world_size"], r["data_parallel_size"], r["micro_batch_size"], r["accum"],
                r["global_batch_size"]) == (2, 2, 3, 2, 12)
        assert r["real_tokens_per_step"] == int(whole["attention_mask"].sum())
        assert len(r["step_ms_rounds"]) == 2 and r["median_step_ms"] > 0
        assert r["real_tokens_per_s"] == pytest.approx(r["real_tokens_per_step"] / r["median_step_ms"] * 1e3)
        assert r["real_tokens_per_s_per_gpu"] == pytest.approx(r["real_tokens_per_s"] / 2)
        assert 0 < r["mfu"] and r["device"] == "cpu" and r["attention_backend"] == "sdpa"
    summary = subprocess.run([sys.executable, "-m", "benchmarks.dp_scaling", "--summarize", str(out)],
                             cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and "n/a (no 1-GPU run)" in summary.stdout, explain(summary)
