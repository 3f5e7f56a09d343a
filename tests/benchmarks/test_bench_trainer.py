"""benchmarks/trainer.py end to end on CPU with a tiny model: trainer and bare-step throughput in one call."""

import gzip
import json
import subprocess
import sys

import pytest

from tests.train.launch import REPO, child_env, explain, tiny_config_on_sample


def run_bench_trainer(tmp_path, config, out, *args: str) -> tuple[dict, list[dict], str]:
    """benchmarks/trainer.py on `config` into `out`: its result, the run's metrics.jsonl records, its stdout."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.trainer", "--config", str(config), *args,
                           "--output_dir", str(out)],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH_TRAINER "))
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads(line[len("BENCH_TRAINER "):]), records, proc.stdout


@pytest.mark.slow
def test_bench_trainer_reports_the_trainer_and_the_plain_step_between_its_windows(tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    result, _, stdout = run_bench_trainer(tmp_path, config, tmp_path / "bench", "--steps", "40", "--engine-step",
                                          "--zero-stage", "2")
    assert result["zero_stage"] == 2 and result["trainer_steps_measured"] == 30  # steps 11-40: after window one
    assert result["optimizer_wrapper"] == "FlatGradientZeroOptimizer"
    for key in ("trainer_tokens_per_s", "trainer_loop_tokens_per_s", "trainer_mfu", "trainer_over_plain"):
        assert result[key] > 0, key
    assert result["trainer_loop_tokens_per_s"] >= result["trainer_tokens_per_s"]  # the final save only adds time
    assert result["plain"]["steps"] == 30 and len(result["plain"]["blocks_tokens_per_s"]) == 3  # not after the last
    assert result["engine"]["steps"] == 30 and result["engine_over_plain"] > 0
    assert len(result["window_pairs"]) == 2 and result["trainer_over_plain_paired"]["pairs"] == 2
    assert "log windows" in stdout
    assert (tmp_path / "bench" / "bench_trainer.json").is_file()
    assert (tmp_path / "bench" / "checkpoints" / "latest").read_text().strip() == "step_0000040"


@pytest.mark.slow
def test_bench_trainer_profile_records_the_third_window_and_a_plain_block_and_leaves_it_out_of_the_pairs(
        tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    out = tmp_path / "bench"
    result, _, stdout = run_bench_trainer(tmp_path, config, out, "--steps", "50", "--zero-stage", "1", "--profile",
                                          "--mlm-output", "loss")
    assert result["mlm_output"] == "loss"  # recorded with the result
    assert set(result["profile_ms_per_step"]) == {"trainer", "plain"}
    for breakdown in result["profile_ms_per_step"].values():
        assert {"gemm_ms", "attention_ms", "other_ms", "idle_ms", "kernels_per_step"} <= set(breakdown)
    for name in ("trainer", "plain"):
        events = json.loads(gzip.decompress((out / f"trace_{name}.json.gz").read_bytes()))["traceEvents"]
        assert any(e.get("cat") == "cpu_op" for e in events), name  # the recorded steps are in the trace
    assert len(result["window_pairs"]) == 2 and result["trainer_over_plain_paired"]["pairs"] == 2  # windows 2 and 4, not 3
    assert result["plain"]["steps"] == 40  # the profiled plain block is extra, not timed
    assert "profile, trainer (ms per step)" in stdout


@pytest.mark.slow
def test_bench_checkpoint_times_saves_with_and_without_the_zip_crc32(tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.checkpoint", "--config", str(config),
                           "--rounds", "2", "--train-steps", "1"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH_CHECKPOINT "))
    result = json.loads(line[len("BENCH_CHECKPOINT "):])
    for setting in ("crc32_on", "crc32_off"):
        times = result[setting]["all"]
        assert len(times["stop"]) == 2 and all(0 < s <= p for s, p in zip(times["stop"], times["published"]))
    published = sorted(p.name for p in (tmp_path / "runs" / "bench_checkpoint" / "checkpoints").glob("step_*"))
    assert published == ["step_0001004"]  # keep_last 1: the last of the four saves


@pytest.mark.slow
def test_the_plain_blocks_stay_out_of_the_trainers_clock_and_leave_its_run_unchanged(tmp_path, sample_corpus):
    """The plain steps after each log window but the last must not count in the trainer's throughput (its clock
    leaves callbacks out), and the trainer's own run must be exactly a run without them (same lr, same losses:
    the plain step has its own model, and the RNG streams are put back after each block)."""
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    records = run_trainer_plainly(tmp_path, config)
    plain_run = [(r["step"], r["train/lr"], r["train/loss"]) for r in records if "train/loss" in r]
    result, records, _ = run_bench_trainer(tmp_path, config, tmp_path / "bench", "--steps", "25")
    bench_run = [(r["step"], r["train/lr"], r["train/loss"]) for r in records if "train/loss" in r]
    assert [s for s, _, _ in bench_run] == [10, 20, 25]
    assert bench_run == plain_run  # fp32 on CPU: the same run, bit for bit
    blocks = result["plain"]
    assert blocks["steps"] == 20 and len(blocks["blocks_tokens_per_s"]) == 2  # after steps 10 and 20, not 25
    assert result["trainer_steps_measured"] == 15  # steps 11-25
    # The clock runs from the end of window 1 to the last step: windows 2 and 3 plus what lies between them
    # (logging, the halfway save). Counted in, the 20 plain steps would add their own time to it.
    steps_seconds = sum(r["train/window_seconds"] for r in records if "train/window_seconds" in r and r["step"] > 10)
    assert result["trainer_loop_seconds_measured"] < steps_seconds + 0.5 * blocks["seconds"]


def run_trainer_plainly(tmp_path, config) -> list[dict]:
    """pretrain_bert.py on the bench's settings (25 steps, ZeRO-2, the same intervals): its metrics records."""
    out = tmp_path / "plain_run"
    proc = subprocess.run([sys.executable, str(REPO / "pretrain_bert.py"), "--config", str(config),
                           "--schedule.total_steps", "25", "--parallel.zero_stage", "2", "--output_dir", str(out),
                           "--checkpoint.dir", str(out / "checkpoints"), "--checkpoint.resume", "none",
                           "--checkpoint.save_interval", "12", "--checkpoint.keep_last", "1",
                           "--logging.log_interval", "10", "--logging.eval_interval", "0"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
