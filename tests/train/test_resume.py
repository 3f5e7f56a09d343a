"""Interrupted runs continue exactly: SIGTERM saves and exits, SIGKILL mid-save keeps the last good checkpoint,
and the resumed losses equal an uninterrupted run's, step by step (fp32 on CPU, dropout on: RNG is restored).
The uninterrupted run saves synchronously, the interrupted one asynchronously (the default)."""

import json

import pytest

from megabert.checkpoint.manager import latest_checkpoint, list_checkpoints
from tests.train.launch import explain, losses, run_trainer, summaries, tiny_config


@pytest.mark.slow
def test_sigterm_then_sigkill_mid_save_then_resume_equals_uninterrupted(tmp_path):
    straight = tiny_config(tmp_path / "straight")
    straight["logging"].update(tensorboard=True, gpu_hour_price=2.5)  # logging only: the losses are unchanged
    straight["checkpoint"]["async_save"] = False
    proc = run_trainer(straight, tmp_path)
    assert proc.returncode == 0, explain(proc)
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(1, 13))
    assert (tmp_path / "straight" / "model" / "model.safetensors").is_file()  # exported at the end
    assert list((tmp_path / "straight" / "tensorboard").glob("events.out.tfevents.*"))
    last = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < last["final/cost_usd"] <= last["final/projected_cost_usd"] + 1e-12
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["logging"]["gpu_hour_price"] == 2.5

    interrupted = tiny_config(tmp_path / "interrupted")
    ckpt = tmp_path / "interrupted" / "ckpt"
    # 1. SIGTERM during step 5: the ranks agree on it with step 5's flags, which the host reads (without waiting
    # for the device) at the end of step 6; a checkpoint of step 6 is saved and the process exits cleanly.
    proc = run_trainer(interrupted, tmp_path, env={"MEGABERT_TEST_SIGTERM_AT_STEP": "5"})
    assert proc.returncode == 0, explain(proc)
    assert summaries(proc)[-1]["stopped_by_signal"] is True and "SIGTERM" in proc.stderr
    assert latest_checkpoint(ckpt).name == "step_0000006"
    # 2. Resume; SIGKILL while the step-8 checkpoint is being published (engine files written in the background,
    # not renamed) while training goes on.
    proc = run_trainer(interrupted, tmp_path, env={"MEGABERT_TEST_KILL_AT_PUBLISH": "8"})
    assert proc.returncode == -9, explain(proc)
    assert (ckpt / ".tmp.step_0000008").is_dir()
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_0000004", "step_0000006"]
    assert (ckpt / "latest").read_text().strip() == "step_0000006"
    # 3. Resume auto from the last good checkpoint (step 6) and run to the end.
    proc = run_trainer(interrupted, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "resumed from" in proc.stderr and "step_0000006" in proc.stderr
    assert not (ckpt / ".tmp.step_0000008").exists()
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_0000008", "step_0000012"]  # keep_last 2

    resumed = losses(tmp_path / "interrupted")
    assert sorted(resumed) == list(range(1, 13))
    for step, values in resumed.items():
        assert values == [reference[step][0]] * len(values), f"step {step}: {values} != {reference[step]}"
    state = json.loads((ckpt / "step_0000012" / "trainer_state.json").read_text())
    assert state["consumed_samples"] == 12 * 16
    assert reference[12][0] < reference[1][0]


@pytest.mark.slow
def test_a_finished_run_started_again_says_so_and_rewrites_nothing(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    proc = run_trainer(cfg, tmp_path)
    assert proc.returncode == 0, explain(proc)
    ckpt = tmp_path / "run" / "ckpt"
    files = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    proc = run_trainer(cfg, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert summaries(proc)[-1]["already_finished"] is True
    assert "already finished at step 12" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()} == files  # nothing rewritten


@pytest.mark.slow
def test_a_full_disk_during_a_save_stops_the_run_at_once_naming_the_cause(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    cfg["schedule"]["total_steps"] = 40
    cfg["checkpoint"]["save_interval"] = 8
    proc = run_trainer(cfg, tmp_path, env={"MEGABERT_TEST_DISK_FULL_AT": "16"})
    assert proc.returncode != 0
    assert "no space left on the device holding" in proc.stderr and "step_0000016" in proc.stderr
    assert "unexpected pos" not in proc.stderr
    assert "latest` still names step_0000008" in proc.stderr
    assert max(losses(tmp_path / "run")) <= 18  # stopped within a step or two, not at the next save (step 24)
    assert latest_checkpoint(tmp_path / "run" / "ckpt").name == "step_0000008"


@pytest.mark.slow
def test_the_compiled_model_trains_through_the_engine_like_the_eager_one(tmp_path):
    """parallel.compile: the forward and loss as one graph inside DeepSpeed's engine (its hooks stay outside the
    graph, so nothing recompiles per micro-step); on a CPU the graph is traced without code generation, so the
    losses equal eager ones exactly, also across a SIGTERM and a resume."""
    runs = {}
    for compiled in (False, True):
        cfg = tiny_config(tmp_path / f"compiled_{compiled}")
        cfg["parallel"]["compile"] = compiled
        cfg["schedule"]["total_steps"] = 6
        proc = run_trainer(cfg, tmp_path, env={"TORCH_LOGS": "recompiles"})
        assert proc.returncode == 0, explain(proc)
        assert "Recompiling" not in proc.stderr
        runs[compiled] = losses(tmp_path / f"compiled_{compiled}")
    assert runs[True] == runs[False] and sorted(runs[True]) == list(range(1, 7))

    # Stopped by SIGTERM and resumed, the compiled run (traced again in the new process) goes on exactly.
    cfg = tiny_config(tmp_path / "compiled_resumed")
    cfg["parallel"]["compile"] = True
    cfg["schedule"]["total_steps"] = 6
    proc = run_trainer(cfg, tmp_path, env={"MEGABERT_TEST_SIGTERM_AT_STEP": "2"})
    assert proc.returncode == 0 and summaries(proc)[-1]["stopped_by_signal"] is True, explain(proc)
    proc = run_trainer(cfg, tmp_path)
    assert proc.returncode == 0 and "resumed from" in proc.stderr, explain(proc)
    resumed = losses(tmp_path / "compiled_resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step, values in resumed.items():
        assert values == [runs[False][step][0]] * len(values), f"step {step}: {values} != {runs[False][step]}"


def test_a_run_resumed_on_other_hardware_names_both_in_its_final_summary(tmp_path):
    """The final summary's hardware is what every part of the run trained on: a study's wall-clock comparison reads
    it, and a checkpoint carried from a GPU node to another kind of machine must not pass for one kind."""
    cfg = tiny_config(tmp_path / "run")
    for stop_at in (3, 7):  # started, then resumed on the same kind of machine: named once
        proc = run_trainer(cfg, tmp_path, env={"MEGABERT_TEST_SIGTERM_AT_STEP": str(stop_at)})
        assert proc.returncode == 0 and summaries(proc)[-1]["stopped_by_signal"] is True, explain(proc)
        state_file = latest_checkpoint(tmp_path / "run" / "ckpt") / "trainer_state.json"
        state = json.loads(state_file.read_text())
        assert state["hardware"] == ["1 x cpu"], state
    state["hardware"] = ["1 x NVIDIA H100 80GB HBM3"]  # as if the first part had run on a GPU node
    state_file.write_text(json.dumps(state))

    proc = run_trainer(cfg, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert summaries(proc)[-1]["hardware"] == "1 x NVIDIA H100 80GB HBM3 then 1 x cpu"
