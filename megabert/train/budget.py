"""A wall-clock budget for a run: measure the step rate, then fix the step count so the whole schedule fits.

    budget = budget_for_run(cfg.schedule, saved_state.get(BUDGET_KEY))    # None: no budget; {} on a fresh run
    total = budget.start(step, time.perf_counter())        # when the loop starts; the steps it may run to now
    fixed = budget.record(step, time.perf_counter())       # after each optimizer step; the count, once, when fixed
    if fixed: refresh_lr(scheduler)                        # the next step already follows the fixed schedule
    trainer_state[BUDGET_KEY] = budget.state_dict()         # in every checkpoint
    log.info(budget.report())                               # at the end: the estimate against the actual end

What the budget covers: the training loop's wall clock, from the end of each process's first step to the end of
its last, with everything in between (waiting for data, logging, evaluation, checkpoint snapshots), summed over the
processes of a resumed run. Process start-up (imports, sample indices, the engine), the first step of each process
(where torch.compile compiles the model, 30-60 s for base on a GPU, and CUDA libraries initialise) and what follows
the last step (the final save, evaluation and export) are outside it: they do not grow with the step count, and
counting a compilation would make a short budget compare compilers rather than models. Each is logged.

How the count is fixed: the first `ignore_steps` steps after the loop starts are not measured (memory allocation,
kernel compilation and autotuning make them slow); the next `measure_steps` give the seconds per step, and

    total_steps = step + max(1, floor((budget - spent) / seconds_per_step))

so the steps already taken and the time already spent count. Until then the schedule follows the configured
schedule.total_steps (its warm-up shapes the measured steps' lr: a few tiny steps in a real run); from the next
step on it is laid over the fixed count (warm-up to warmup_fraction of it, decay to the floor at its end), because
the LR scheduler reads `schedule.total_steps`, which the budget sets. What evaluations and checkpoints later in the
run cost is not predicted (the measured steps rarely include one); the report at the end says by how much the
run missed its budget.

Resume: the count is recorded in every checkpoint (`state_dict`), so a resumed run keeps it and measures nothing;
a run resumed from a checkpoint written before the count was fixed measures again in its new process, the time
spent so far counted. With several processes every rank must fix the same count: `agree` (the trainer passes an
all-reduce MAX) gives every rank the slowest rank's rate and the largest time spent.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from megabert.config import ScheduleConfig

BUDGET_KEY = "budget"
"""Key of the budget's state in a checkpoint's trainer state."""

STARTUP_STEPS = 1
"""Steps at the start of each process whose time is start-up, outside the budget (torch.compile compiles in the
first)."""
IGNORE_STEPS = 5
"""Steps at the start of each process left out of the measurement (allocation, compilation, autotuning)."""
MEASURE_STEPS = 20
"""Steps whose mean duration is the rate the count is fixed from."""

Agree = Callable[[Sequence[float]], Sequence[float]]
"""Element-wise maximum of the values over every rank (identity in one process)."""


class WallClockBudget:
    """Fixes `schedule.total_steps` from the measured step rate so that the run ends within its budget."""

    def __init__(self, schedule: ScheduleConfig, state: Optional[dict[str, Any]] = None,
                 agree: Optional[Agree] = None, ignore_steps: int = IGNORE_STEPS, measure_steps: int = MEASURE_STEPS,
                 startup_steps: int = STARTUP_STEPS):
        recorded = bool(state and state.get("total_steps") is not None)
        if schedule.budget_minutes is None and not recorded:
            raise ValueError("schedule.budget_minutes is not set: a run without a budget needs no WallClockBudget")
        if ignore_steps < 0 or measure_steps < 1 or not 0 <= startup_steps <= ignore_steps:
            raise ValueError(f"ignore_steps ({ignore_steps}) must be >= 0, measure_steps ({measure_steps}) >= 1 and "
                             f"startup_steps ({startup_steps}) between 0 and ignore_steps")
        self.schedule = schedule
        self.budget_seconds = (60.0 * float(schedule.budget_minutes) if schedule.budget_minutes is not None
                               else float(state["budget_seconds"]))
        self.agree = agree
        self.ignore_steps, self.measure_steps, self.startup_steps = ignore_steps, measure_steps, startup_steps
        self.spent_seconds = 0.0
        self.startup_seconds = 0.0  # this process's first steps, outside the budget
        self.estimate: Optional[dict[str, Any]] = None  # set when the count is fixed
        self.recorded_budget_seconds: Optional[float] = None  # the budget the recorded count was fixed for
        if state:
            self.spent_seconds = float(state.get("spent_seconds", 0.0))
            if state.get("total_steps") is not None:
                self.estimate = dict(state["estimate"])
                self.recorded_budget_seconds = float(state["budget_seconds"])
                schedule.total_steps = int(state["total_steps"])
        self._last: Optional[float] = None  # the clock at the previous call
        self._start_step = 0
        self._measured_seconds = 0.0
        self._measured_steps = 0

    # ------------------------------------------------------------------------------------------------ loop
    @property
    def fixed(self) -> bool:
        return self.estimate is not None

    @property
    def total_steps(self) -> Optional[int]:
        """The fixed count (None while measuring)."""
        return self.estimate["total_steps"] if self.estimate else None

    def start(self, step: int, now: float) -> int:
        """The loop starts (fresh, or resumed at `step`) at clock time `now`. Returns the step count the loop may
        run to for now: the fixed count, or while measuring at least to the end of the measurement."""
        self._last, self._start_step = now, step
        self._measured_seconds, self._measured_steps = 0.0, 0
        if not self.fixed:
            self.schedule.total_steps = max(self.schedule.total_steps, self._measure_end + 1)
        return self.schedule.total_steps

    def record(self, step: int, now: float) -> Optional[int]:
        """Optimizer step `step` ended at clock time `now` (the time since the previous call is spent, whatever it
        held). Returns the step count on the call that fixes it, else None."""
        if self._last is None:
            raise RuntimeError("WallClockBudget.record before start(): call start() when the loop starts")
        seconds, self._last = now - self._last, now
        if step <= self._start_step + self.startup_steps:
            self.startup_seconds += seconds
            return None
        self.spent_seconds += seconds
        if self.fixed:
            return None
        if step > self._start_step + self.ignore_steps:
            self._measured_seconds += seconds
            self._measured_steps += 1
        if step < self._measure_end:
            return None
        return self._fix(step)

    @property
    def _measure_end(self) -> int:
        return self._start_step + self.ignore_steps + self.measure_steps

    def _fix(self, step: int) -> int:
        per_step = self._measured_seconds / self._measured_steps
        spent = self.spent_seconds
        if self.agree is not None:
            per_step, spent = (float(x) for x in self.agree([per_step, spent]))
        remaining = self.budget_seconds - spent
        more = max(1, math.floor(remaining / per_step)) if per_step > 0 else 1
        total = step + more
        self.estimate = {"total_steps": total, "fixed_at_step": step, "seconds_per_step": per_step,
                         "spent_at_fix_seconds": spent, "estimated_seconds": spent + more * per_step}
        self.recorded_budget_seconds = self.budget_seconds
        self.schedule.total_steps = total
        return total

    # ------------------------------------------------------------------------------------------------ records
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records: the budget, the time spent and, once fixed, the count and its estimate."""
        return {"budget_seconds": self.recorded_budget_seconds or self.budget_seconds,
                "spent_seconds": self.spent_seconds, "total_steps": self.total_steps,
                "estimate": dict(self.estimate) if self.estimate else None}

    def budget_changed(self) -> bool:
        """A resumed run was given another budget than the one its recorded count was fixed for (it keeps the
        count: a schedule cannot change its length half-way and stay the schedule it was)."""
        return self.fixed and abs(self.recorded_budget_seconds - self.budget_seconds) > 1e-6

    def fix_message(self) -> str:
        """The log line for the moment the count is fixed."""
        e = self.estimate
        return (f"budget {_duration(self.budget_seconds)}: {1 / e['seconds_per_step']:.3g} steps/s measured over "
                f"{self.measure_steps} steps; {e['spent_at_fix_seconds']:.1f} s spent by step {e['fixed_at_step']}, "
                f"so the run takes {e['total_steps']} steps (estimated end at {e['estimated_seconds']:.1f} s)")

    def summary(self, step: int) -> dict[str, Any]:
        """The run's budget figures at its end (`step` reached): for the run summary and the study."""
        out = {"budget_seconds": self.recorded_budget_seconds or self.budget_seconds,
               "budget_spent_seconds": self.spent_seconds, "budget_total_steps": self.total_steps,
               "budget_steps_run": step, "budget_startup_seconds": self.startup_seconds}
        if self.estimate:
            out["budget_estimated_seconds"] = self.estimate["estimated_seconds"]
            out["budget_fixed_at_step"] = self.estimate["fixed_at_step"]
        return out

    def report(self, step: int) -> str:
        """The estimate against the actual end, for the log."""
        if not self.estimate:
            return (f"budget {_duration(self.budget_seconds)}: the run ended at step {step} after "
                    f"{self.spent_seconds:.1f} s, before the step rate was measured")
        e, budget = self.estimate, self.recorded_budget_seconds
        missed = self.spent_seconds - budget
        return (f"budget {_duration(budget)}: estimated {e['total_steps']} steps in {e['estimated_seconds']:.1f} s; "
                f"actual {step} steps in {self.spent_seconds:.1f} s ({'+' if missed >= 0 else '-'}{abs(missed):.1f} s, "
                f"{100 * missed / budget:+.1f}% against the budget); outside it, this process's start-up steps "
                f"(compilation): {self.startup_seconds:.1f} s")


def budget_for_run(schedule: ScheduleConfig, state: Optional[dict[str, Any]] = None,
                   agree: Optional[Agree] = None) -> Optional[WallClockBudget]:
    """The run's budget: when schedule.budget_minutes is set, or when the checkpoint resumed from recorded a count
    (a resumed budget run keeps its schedule even if the budget was dropped from the config). None otherwise."""
    if schedule.budget_minutes is None and not (state and state.get("total_steps") is not None):
        return None
    return WallClockBudget(schedule, state, agree)


def max_over_ranks(device) -> Agree:
    """An `agree` for the trainer: the element-wise maximum over every rank of the default process group, through
    one all-reduce on `device` (in one process, the values themselves)."""
    def agree(values: Sequence[float]) -> Sequence[float]:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    return agree


def refresh_lr(scheduler) -> None:
    """Recomputes the current lr of a LambdaLR after the schedule it reads changed: it computed the next step's lr
    at the end of the step just taken, from the schedule as it was then."""
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:.3g} s"
