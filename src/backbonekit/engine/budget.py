"""``--time``: a wall-clock budget for a training run, shared by ``train`` and ``detect train``.

A run with a budget measures its epochs (training and validation; the checkpoint
writes after them count in the time spent, not in the mean) and, after each one, sets its
total epochs to what fits in the time left: ``floor(left / mean epoch seconds)`` more. When that total
changes, the learning-rate schedule is rebuilt for the new length at the step the run has reached
(:func:`refit_schedule`), so the warm-up and the decay fit the epochs the budget allows and the last
planned epoch ends at the schedule's final rate. The first epoch is also estimated early, from its first
tenth of steps (validation not counted yet), and a cosine schedule is shortened then if fewer epochs fit
than planned (:func:`fit_first_epoch`): a detector whose first epoch takes most of the budget still decays
in it instead of spending the whole budget warming up. Inside an epoch, training stops at the first step after
the budget is spent (an epoch longer than the budget, or a machine that slowed down); that epoch is then
evaluated and saved as usual. ultralytics' ``time=`` re-estimates its epochs the same way.

The clock starts when the trainer starts (data loading counts); the time already spent is saved in
``last.pt``, so a resumed run continues the same budget instead of starting a new one. The final
evaluation of best.pt and the report come after the budget (about one validation pass).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import torch

from . import dist
from .optim import WarmupCosine

clock = time.monotonic  # replaced by tests that need epochs of a known length
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(value: str | float | int | None, name: str = "time") -> float | None:
    """Seconds of a budget written ``90s``, ``10m``, ``1.5h`` or as plain minutes (``10``, ``2.5``);
    None for None. One ValueError line for anything else (zero, negative, NaN, unknown unit)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    match = _DURATION.fullmatch(text)
    seconds = float(match.group(1)) * UNITS[match.group(2) or "m"] if match else math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive duration such as 90s, 10m, 1.5h or a number of minutes, "
                         f"found {value!r}")
    return seconds


class TimeBudget:
    """The budget of one run: seconds spent (this process and earlier ones), epochs measured.

    In a distributed run every rank asks the same questions at the same points; the answers use the
    ranks' mean clock, so all ranks plan the same epochs and stop at the same step.
    """

    def __init__(self, seconds: float, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.seconds = seconds
        self.spent_before = float(state.get("spent_s", 0.0))
        self.epoch_seconds = float(state.get("epochs_s", 0.0))
        self.epochs_timed = int(state.get("epochs_timed", 0))
        self.started = clock()
        self.epoch_started = self.started

    @classmethod
    def start(cls, spec: str | None, state: Mapping[str, Any] | None = None) -> "TimeBudget | None":
        """The budget of ``spec`` (``cfg.time``), continuing ``state`` (a checkpoint's); None without a budget."""
        seconds = parse_duration(spec)
        return None if seconds is None else cls(seconds, state)

    def _spent_here(self) -> float:
        return self.spent_before + clock() - self.started

    def spent(self) -> float:
        return dist.sum_values(self._spent_here())[0] / dist.world_size()

    def expired(self) -> bool:
        return self.spent() >= self.seconds

    def begin_epoch(self) -> None:
        self.epoch_started = clock()

    def close_epoch(self) -> None:
        """Count the epoch that just ended (since :meth:`begin_epoch`) in the mean epoch time."""
        self.epoch_seconds += dist.sum_values(clock() - self.epoch_started)[0] / dist.world_size()
        self.epochs_timed += 1

    def epochs_that_fit(self, epochs_done: int) -> int | None:
        """The total epochs that fit the budget (``epochs_done``: stop now); None before any epoch was timed."""
        if not self.epochs_timed:
            return None
        mean = self.epoch_seconds / self.epochs_timed
        left = self.seconds - self.spent()
        return epochs_done + max(0, math.floor(left / mean)) if mean > 0 else epochs_done

    def state(self) -> dict[str, float]:
        """What ``last.pt`` keeps so that a resume continues this budget (rank 0 alone writes it: no collective)."""
        return {"seconds": self.seconds, "spent_s": self._spent_here(), "epochs_s": self.epoch_seconds,
                "epochs_timed": self.epochs_timed}

    def batches(self, batches: Any, on_probe: Callable[[int], None] | None = None) -> "BudgetedBatches":
        """``batches`` ending when the budget is spent; ``on_probe(steps_done)``, which the trainers pass in a
        run's first epoch only, is called once after the first tenth of the steps (:data:`PROBE_FRACTION`)."""
        return BudgetedBatches(batches, self, on_probe)

    def epoch_elapsed(self) -> float:
        """Seconds since :meth:`begin_epoch` (the ranks' mean)."""
        return dist.sum_values(clock() - self.epoch_started)[0] / dist.world_size()


PROBE_FRACTION = 0.1  # the share of the first epoch's steps after which its length is estimated


class BudgetedBatches:
    """An epoch's batches that end at the first step after the budget is spent (at least one step)."""

    def __init__(self, batches: Any, budget: TimeBudget, on_probe: Callable[[int], None] | None = None) -> None:
        self.inner, self.budget, self.on_probe = batches, budget, on_probe

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        probe_step = max(1, math.ceil(PROBE_FRACTION * len(self.inner))) if self.on_probe else -1
        for step, batch in enumerate(self.inner):
            if step and self.budget.expired():
                return
            if step == probe_step:
                self.on_probe(step)
            yield batch


def fit_first_epoch(budget: TimeBudget, scheduler: torch.optim.lr_scheduler.LRScheduler, steps_done: int,
                    steps_per_epoch: int, epochs: int) -> int:
    """The epochs that fit the budget, estimated ``steps_done`` steps into the first epoch; a cosine
    schedule planned for more is shortened to them in place (the optimizer's next step takes the new rate).
    Only shortens: the refit after the epoch, validation counted, sets the final plan either way. Other
    schedules (OneCycleLR) and a clock that has not moved keep ``epochs``."""
    factor = getattr(scheduler, "lr_lambdas", [None])[0]
    elapsed = budget.epoch_elapsed()
    if not isinstance(factor, WarmupCosine) or elapsed <= 0:
        return epochs
    epoch_seconds = elapsed * steps_per_epoch / steps_done
    left = budget.seconds - budget.spent() + elapsed  # what was left when this epoch began
    fitted = max(1, math.floor(left / epoch_seconds))
    if fitted >= epochs:
        return epochs
    factor.resize(fitted * steps_per_epoch)
    fast_forward(scheduler, scheduler.last_epoch)  # the current rate, from the resized factor
    return fitted


def fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Put a freshly built per-step schedule at step ``steps`` (its rate there, as if it had run)."""
    scheduler.last_epoch = steps - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": the optimizer's steps were taken
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def refit_schedule(budget: TimeBudget | None, epochs: int, epochs_done: int,
                   scheduler: torch.optim.lr_scheduler.LRScheduler,
                   build: Callable[[int], torch.optim.lr_scheduler.LRScheduler], *, epoch_ended: bool = True
                   ) -> tuple[int, torch.optim.lr_scheduler.LRScheduler]:
    """``(epochs, scheduler)`` of a run planned for ``epochs``, fitted to the budget after ``epochs_done``
    epochs: after an epoch (``epoch_ended``, which is timed), or when a run resumes (a new ``--time`` may
    allow more epochs, or none). When the plan changes, the schedule is ``build(new_epochs)`` put at the step
    ``scheduler`` reached; unchanged (or stopping now) it is ``scheduler`` itself. Without a budget, or
    before any epoch was timed, nothing changes."""
    if budget is None:
        return epochs, scheduler
    if epoch_ended:
        budget.close_epoch()
    fitted = budget.epochs_that_fit(epochs_done)
    if fitted is None:
        return epochs, scheduler
    if fitted in (epochs, epochs_done):  # unchanged, or stopping now: the schedule that ran stays
        return fitted, scheduler
    rebuilt = build(fitted)
    fast_forward(rebuilt, scheduler.last_epoch)  # a per-step schedule: last_epoch counts the steps taken
    return fitted, rebuilt
