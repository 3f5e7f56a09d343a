"""A wall-clock budget: the measured step rate fixes the step count, the LR schedule then runs to its floor within
the budget, and a resumed run keeps the recorded count instead of measuring again (fake clock; one real run)."""

import json
import math

import pytest
import torch
import torch.nn as nn

from megabert.config import ConfigError, ScheduleConfig, TrainConfig, apply_overrides
from megabert.train.budget import BUDGET_KEY, WallClockBudget, budget_for_run, refresh_lr
from megabert.train.optimizer import DecoupledAdamW, build_scheduler, lr_factor


class FakeClock:
    """A step takes `slow` seconds for the first `slow_steps` steps of each process, then `fast`."""

    def __init__(self, slow: float = 3.0, fast: float = 0.5, slow_steps: int = 5):
        self.now, self.slow, self.fast, self.slow_steps = 1000.0, slow, fast, slow_steps
        self.steps_in_process = 0

    def tick(self) -> float:
        self.steps_in_process += 1
        self.now += self.slow if self.steps_in_process <= self.slow_steps else self.fast
        return self.now


def run_loop(schedule: ScheduleConfig, clock: FakeClock, state=None, first_step: int = 0, stop_at=None,
             agree=None):
    """The trainer's use of the budget around a real optimizer and LambdaLR: returns (budget, lr used per step,
    scheduler, last step)."""
    budget = WallClockBudget(schedule, state, agree=agree)  # restores a recorded count into `schedule`
    param = nn.Parameter(torch.ones(2))
    optimizer = DecoupledAdamW([param], lr=1e-3, weight_decay=0.0, foreach=True)
    scheduler = build_scheduler(optimizer, schedule)
    if first_step:  # a resumed scheduler stands where its checkpoint left it
        scheduler.last_epoch = first_step
        refresh_lr(scheduler)
    total = budget.start(first_step, clock.now)
    used, step = {}, first_step
    while step < total and step != stop_at:
        used[step] = optimizer.param_groups[0]["lr"]  # the lr of optimizer step `step` (0-based)
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        step += 1
        fixed = budget.record(step, clock.tick())
        if fixed is not None:
            refresh_lr(scheduler)
            total = fixed
    return budget, used, scheduler, step


def test_measured_rate_fixes_the_count_that_fills_the_budget_with_time_already_spent():
    schedule = ScheduleConfig(total_steps=1000, warmup_fraction=0.1, budget_minutes=1.0)
    budget, _, _, last = run_loop(schedule, FakeClock(slow=3.0, fast=0.5, slow_steps=5))
    # Steps 1-5 (ignored) take 3 s, steps 6-25 (measured) 0.5 s. Step 1 is start-up, outside the budget: 22 s spent
    # at step 25, 38 s left = 76 steps.
    assert budget.estimate["fixed_at_step"] == 25
    assert budget.estimate["seconds_per_step"] == pytest.approx(0.5)
    assert budget.total_steps == schedule.total_steps == last == 101
    assert budget.spent_seconds == pytest.approx(60.0) and budget.startup_seconds == pytest.approx(3.0)
    assert budget.estimate["estimated_seconds"] == pytest.approx(60.0)
    assert "estimated 101 steps in 60.0 s; actual 101 steps in 60.0 s (+0.0 s" in budget.report(last)


def test_the_first_step_of_a_process_compiles_outside_the_budget():
    """A 50 s compilation in step 1 leaves the budget's steps to the model: 60 s of 0.5 s steps after it, where
    counting it would have left one step."""
    compiling = FakeClock(slow=50.0, fast=0.5, slow_steps=1)
    budget, _, _, last = run_loop(ScheduleConfig(1000, 0.1, budget_minutes=1.0), compiling)
    assert last == budget.total_steps == 1 + 120
    assert budget.startup_seconds == pytest.approx(50.0) and budget.spent_seconds == pytest.approx(60.0)
    assert "start-up steps (compilation): 50.0 s" in budget.report(last)
    assert budget.summary(last)["budget_startup_seconds"] == pytest.approx(50.0)

    counted = WallClockBudget(ScheduleConfig(1000, 0.1, budget_minutes=1.0), startup_steps=0)
    counted.start(0, 0.0)
    now = 0.0
    for step in range(1, 26):
        now += 50.0 if step == 1 else 0.5
        counted.record(step, now)
    assert counted.total_steps == 26


def test_schedule_completes_warm_up_and_decay_over_the_fixed_count():
    schedule = ScheduleConfig(total_steps=10_000, warmup_fraction=0.2, final_lr_fraction=0.1, budget_minutes=2.0)
    budget, used, scheduler, last = run_loop(schedule, FakeClock(slow=1.0, fast=0.25))
    total = budget.total_steps
    assert total == last == 25 + math.floor((120 - 4 * 1.0 - 20 * 0.25) / 0.25)  # step 1 is start-up
    # From the step after the fix, every lr is the schedule of the fixed count (warm-up to 20% of it, then decay).
    fixed_at = budget.estimate["fixed_at_step"]
    for step in range(fixed_at, total):
        assert used[step] == pytest.approx(1e-3 * lr_factor(step, ScheduleConfig(total, 0.2, 0.1))), step
    warmup_end = round(0.2 * total)
    assert used[warmup_end] == pytest.approx(1e-3) and max(used.values()) == pytest.approx(1e-3)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)  # the floor, reached at the last step's end
    # Before the fix the lr followed the configured 10,000 steps' warm-up: small, increasing.
    assert all(used[s] == pytest.approx(1e-3 * (s + 1) / 2000) for s in range(fixed_at))


def test_resume_keeps_the_recorded_count_and_does_not_measure_again():
    schedule = ScheduleConfig(total_steps=1000, warmup_fraction=0.1, budget_minutes=1.0)
    first, _, _, stopped = run_loop(schedule, FakeClock(), stop_at=40)
    saved = json.loads(json.dumps({BUDGET_KEY: first.state_dict()}))  # as a checkpoint's trainer_state.json
    assert saved[BUDGET_KEY]["total_steps"] == 101 and stopped == 40

    fresh = ScheduleConfig(total_steps=1000, warmup_fraction=0.1, budget_minutes=1.0)
    slower = FakeClock(slow=3.0, fast=2.0)  # a slower machine: measuring again would give another count
    resumed, used, scheduler, last = run_loop(fresh, slower, state=saved[BUDGET_KEY], first_step=40)
    assert fresh.total_steps == resumed.total_steps == last == 101
    assert resumed.estimate == first.estimate
    # The new process's first step (41) is its start-up; steps 42-45 take 3 s, 46-101 2 s.
    assert resumed.spent_seconds == pytest.approx(first.spent_seconds + 4 * 3.0 + 56 * 2.0)
    assert used[40] == pytest.approx(1e-3 * lr_factor(40, ScheduleConfig(101, 0.1)))
    assert "+" in resumed.report(last) and "actual 101 steps" in resumed.report(last)


def test_resume_before_the_count_was_fixed_measures_again_with_the_time_spent_counted():
    schedule = ScheduleConfig(total_steps=1000, warmup_fraction=0.1, budget_minutes=1.0)
    first, _, _, _ = run_loop(schedule, FakeClock(), stop_at=10)
    state = first.state_dict()
    assert state["total_steps"] is None and state["spent_seconds"] == pytest.approx(4 * 3.0 + 5 * 0.5)
    resumed, _, _, last = run_loop(ScheduleConfig(1000, 0.1, budget_minutes=1.0), FakeClock(), state=state,
                                   first_step=10)
    # Measured over steps 16-35 of the new process (step 11 its start-up); 14.5 s + 22 s spent by step 35:
    # 35 + 23.5 / 0.5 steps.
    assert resumed.estimate["fixed_at_step"] == 35
    assert resumed.total_steps == last == 35 + 47


def test_ranks_agree_on_the_slowest_rate_and_the_largest_time_spent():
    seen = []

    def agree(values):  # another rank measured 1.0 s per step and spent 30 s
        seen.append(list(values))
        return [max(values[0], 1.0), max(values[1], 30.0)]

    budget, _, _, last = run_loop(ScheduleConfig(1000, 0.1, budget_minutes=1.0), FakeClock(), agree=agree)
    assert seen == [[pytest.approx(0.5), pytest.approx(22.0)]]
    assert budget.total_steps == last == 25 + 30


def test_a_budget_smaller_than_the_measurement_still_ends_one_step_after_it():
    budget, _, _, last = run_loop(ScheduleConfig(1000, 0.1, budget_minutes=0.1), FakeClock())
    assert budget.total_steps == last == 26
    assert "actual 26 steps in 22.5 s (+16.5 s" in budget.report(last)  # over budget, and by how much
    assert budget.spent_seconds > budget.budget_seconds


def test_configured_total_below_the_measurement_does_not_end_the_loop_early():
    schedule = ScheduleConfig(total_steps=3, warmup_fraction=0.0, budget_minutes=1.0)
    budget = WallClockBudget(schedule)
    assert budget.start(0, 0.0) == 26 and schedule.total_steps == 26


def test_budget_only_when_configured_or_recorded():
    assert budget_for_run(ScheduleConfig()) is None
    recorded = {"budget_seconds": 60.0, "spent_seconds": 10.0, "total_steps": 77,
                "estimate": {"total_steps": 77, "fixed_at_step": 25, "seconds_per_step": 0.5,
                             "spent_at_fix_seconds": 25.0, "estimated_seconds": 51.0}}
    dropped = ScheduleConfig(total_steps=500)  # the budget was dropped from the config on resume
    budget = budget_for_run(dropped, recorded)
    assert budget is not None and dropped.total_steps == 77 and not budget.budget_changed()
    changed = ScheduleConfig(total_steps=500, budget_minutes=5.0)
    assert budget_for_run(changed, recorded).budget_changed() and changed.total_steps == 77


def test_budget_minutes_is_validated_and_overridable():
    cfg = apply_overrides(TrainConfig(), ["--schedule.budget_minutes", "30"])
    assert cfg.schedule.budget_minutes == 30.0
    cfg.validate()
    assert apply_overrides(cfg, ["--schedule.budget_minutes", "null"]).schedule.budget_minutes is None
    for bad in ("0", "-5", "NaN"):
        cfg = apply_overrides(TrainConfig(), ["--schedule.budget_minutes", bad])
        with pytest.raises(ConfigError, match=r"schedule.budget_minutes .* must be a positive number of minutes"):
            cfg.validate()


def test_real_run_fixes_its_count_records_it_and_resumes_without_measuring_again(tmp_path):
    """pretrain_bert.py's main on CPU with a 4-second budget, stopped by SIGTERM after the count is fixed, then
    resumed: the resumed run ends at the recorded count and measures nothing."""
    from megabert.checkpoint.manager import latest_checkpoint
    from tests.train.launch import explain, losses, run_trainer, summaries, tiny_config

    cfg = tiny_config(tmp_path / "run")
    cfg["schedule"] = {"total_steps": 40, "warmup_fraction": 0.1, "budget_minutes": 4 / 60}
    cfg["checkpoint"].update(save_interval=0)
    cfg["logging"].update(log_interval=1)
    proc = run_trainer(cfg, tmp_path, env={"MEGABERT_TEST_SIGTERM_AT_STEP": "30"})
    assert proc.returncode == 0, explain(proc)
    assert summaries(proc)[-1]["stopped_by_signal"] is True
    assert proc.stderr.count("steps/s measured over 20 steps") == 1, explain(proc)
    state = json.loads((latest_checkpoint(tmp_path / "run" / "ckpt") / "trainer_state.json").read_text())
    recorded = state[BUDGET_KEY]
    assert recorded["estimate"]["fixed_at_step"] == 25 and recorded["total_steps"] > 31
    assert 0 < recorded["spent_seconds"] < recorded["budget_seconds"]

    proc = run_trainer(cfg, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "steps/s measured" not in proc.stderr, explain(proc)  # the recorded count is kept
    summary = summaries(proc)[-1]
    assert summary["step"] == summary["budget_total_steps"] == recorded["total_steps"]
    assert summary["budget_spent_seconds"] > recorded["spent_seconds"]
    assert f"estimated {recorded['total_steps']} steps" in proc.stderr and "against the budget" in proc.stderr
    total = recorded["total_steps"]
    lrs = {r["step"]: r["train/lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text()
                                                   .splitlines()) if "train/lr" in r}
    assert max(lrs) == total and sorted(losses(tmp_path / "run")) == list(range(1, total + 1))
    fixed_schedule = ScheduleConfig(total, warmup_fraction=0.1)
    for step in range(25, total + 1):  # from the fix on (both processes), the fixed count's schedule
        assert lrs[step] == pytest.approx(0.003 * lr_factor(step, fixed_schedule)), step
    assert lrs[total] == pytest.approx(0.003 * 0.02)  # decayed to the floor at the end
    final = json.loads((latest_checkpoint(tmp_path / "run" / "ckpt") / "trainer_state.json").read_text())
    assert final[BUDGET_KEY]["total_steps"] == recorded["total_steps"]
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())  # as a study's settings check reads it
    assert run_config["schedule"]["total_steps"] == recorded["total_steps"]
    assert json.loads((tmp_path / "run" / "ckpt" / latest_checkpoint(tmp_path / "run" / "ckpt").name
                       / "config.json").read_text())["schedule"]["total_steps"] == recorded["total_steps"]
