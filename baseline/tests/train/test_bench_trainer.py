"""tools/bench_trainer.py end to end on CPU with a tiny model: trainer and bare-step throughput in one call."""

import json
import subprocess
import sys

import pytest

from tests.train.launch import REPO, child_env, explain, tiny_config_on_sample


def run_bench_trainer(tmp_path, config, out, *args: str) -> tuple[dict, list[dict], str]:
    """tools/bench_trainer.py on `config` into `out`: its result, the run's metrics.jsonl records, its stdout."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_trainer.py"), "--config", str(config), *args,
                           "--output_dir", str(out)],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH_TRAINER "))
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads(line[len("BENCH_TRAINER "):]), records, proc.stdout


@pytest.mark.slow
def test_bench_trainer_reports_trainer_bare_step_interleaved_and_breakdown_throughput(tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    result, _, stdout = run_bench_trainer(tmp_path, config, tmp_path / "bench", "--steps", "20", "--bare-steps", "2",
                                          "--short-steps", "2", "--breakdown", "--rounds", "1", "--bare-before",
                                          "--interleave", "--attribute")
    assert result["zero_stage"] == 2 and result["trainer_steps_measured"] == 10  # steps 11-20: after window one
    for key in ("trainer_tokens_per_s", "trainer_loop_tokens_per_s", "bare_tokens_per_s", "bare_replay_tokens_per_s",
                "trainer_mfu", "bare_mfu", "bare_before_tokens_per_s", "trainer_second_half_tokens_per_s"):
        assert result[key] > 0, key
    assert result["trainer_loop_tokens_per_s"] >= result["trainer_tokens_per_s"]  # the final save only adds time
    assert result["bare_steps"] == 2
    assert result["interleaved_bare"]["steps"] == 10  # one block, after the first of two windows
    for kind in ("fed", "step"):  # --attribute: one block of each after the first window too
        assert result[f"interleaved_{kind}"]["steps"] == 10 and result[f"{kind}_over_interleaved_bare"] > 0
    assert set(result["breakdown"]) == {"bare", "bare + staging thread", "step, staged 2 ahead", "step, staged in loop",
                                        "step, staged on thread", "step, GIL switch 5 ms"}
    for variant in result["breakdown"].values():
        assert variant["tokens_per_s"] > 0 and len(variant["rounds_tokens_per_s"]) == 1
    assert "log windows:" in stdout
    assert (tmp_path / "bench" / "bench_trainer.json").is_file()
    assert (tmp_path / "bench" / "checkpoints" / "latest").read_text().strip() == "step_0000020"
    assert not (tmp_path / "bench" / "before_bare_step").exists()  # the scratch checkpoint is removed


@pytest.mark.slow
def test_the_bare_step_before_the_run_is_undone_so_the_trainer_loses_the_same(tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    losses = {}
    for flag in ([], ["--bare-before"]):
        _, records, _ = run_bench_trainer(tmp_path, config, tmp_path / f"bench{len(flag)}", "--steps", "12",
                                          "--bare-steps", "3", "--short-steps", "1", *flag)
        losses[bool(flag)] = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[True] == pytest.approx(losses[False], rel=1e-6, abs=1e-6)  # fp32 on CPU: the same run


@pytest.mark.slow
def test_bench_checkpoint_times_saves_with_and_without_the_zip_crc32(tmp_path, sample_corpus):
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_checkpoint.py"), "--config", str(config),
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
def test_interleaved_bare_blocks_stay_out_of_the_trainers_clock_and_schedule(tmp_path, sample_corpus):
    """--interleave times 10 bare steps after each log window but the last. The trainer's throughput must not count
    them (its clock leaves them out), and its own steps must see the learning rate of a plain run, also with the
    --attribute blocks, which run the trainer's own step. (The breakdown after the run, restricted by --variants,
    only checks that the restriction holds.)"""
    config = tiny_config_on_sample(tmp_path, sample_corpus, seq_len=64)
    results, lrs = {}, {}
    for flag in ([], ["--interleave", "--attribute", "--breakdown", "--rounds", "2", "--variants", "bare"]):
        results[bool(flag)], records, _ = run_bench_trainer(tmp_path, config, tmp_path / f"bench{len(flag)}",
                                                            "--steps", "25", "--bare-steps", "2", "--short-steps",
                                                            "1", *flag)
        lrs[bool(flag)] = [(r["step"], r["train/lr"]) for r in records if "train/lr" in r]
    plain, interleaved = results[False], results[True]
    assert "interleaved_bare" not in plain
    blocks = interleaved["interleaved_bare"]
    assert blocks["steps"] == 20 and len(blocks["blocks_tokens_per_s"]) == 2  # after steps 10 and 20, not 25
    assert interleaved["trainer_loop_over_interleaved_bare"] > 0
    assert lrs[True] == lrs[False] and [s for s, _ in lrs[True]] == [10, 20, 25]
    assert set(interleaved["breakdown"]) == {"bare", "bare + staging thread"}  # --variants picks by prefix
    assert all(len(v["rounds_tokens_per_s"]) == 2 for v in interleaved["breakdown"].values())
    # Both measure steps 11-25; counted in, the 20 bare steps would add about their own time to the interleaved run.
    assert interleaved["trainer_steps_measured"] == plain["trainer_steps_measured"] == 15
    assert interleaved["trainer_loop_seconds_measured"] < plain["trainer_loop_seconds_measured"] + 0.5 * blocks["seconds"]
