"""``--time``: a wall-clock budget fitted to the epochs and the schedule of ``train`` and ``detect train``.

The schedule checks run on a fake clock on which every epoch takes exactly one second, so the epochs
that fit are known in advance; the expected learning rates come from the cosine formula written out
here and from torch's own OneCycleLR. One run uses the real clock and checks that it stops by the budget.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from backbonekit.checkpoint import load_file
from backbonekit.cli import main
from backbonekit.detection.training import trainer as detect_trainer
from backbonekit.detection.training.config import DetectConfig
from backbonekit.engine import budget
from backbonekit.engine.budget import parse_duration
from backbonekit.train import TrainConfig, trainer
from helpers import TINY_DETECT, TINY_TRAIN, interrupt_after

RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "curves.png", "report.html", "eval.json")


class EpochClock:
    """A clock that moves one second per training epoch and stands still otherwise."""

    def __init__(self, monkeypatch, module) -> None:
        self.now = 0.0
        self.real = module.train_one_epoch
        monkeypatch.setattr(budget, "clock", lambda: self.now)
        monkeypatch.setattr(module, "train_one_epoch", self.epoch)

    def epoch(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        self.now += 1.0
        return result


def lr_column(run: Path) -> list[float]:
    return [float(row["lr"]) for row in csv.DictReader((run / "metrics.csv").open())]


def cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then half a cosine to 0 at ``total`` (written out, not imported)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# -- parsing and refusal ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("10", 600), (2.5, 150),
                                           (" 3 M ", 180)])
def test_durations_in_seconds_minutes_hours_or_plain_minutes(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["0", "-5m", "nan", "ten minutes", "10d", "inf"])
def test_bad_budgets_are_refused_in_one_line_by_both_configs(bad):
    for config in (TrainConfig, DetectConfig):
        with pytest.raises(ValueError, match=r"^time must be a positive duration such as 90s, 10m, 1\.5h") as e:
            config(time=bad)
        assert "\n" not in str(e.value) and repr(bad) in str(e.value)


@pytest.mark.parametrize("command", [["train"], ["detect", "train"]])
def test_cli_refuses_a_bad_time_before_writing_anything(command, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*command, "--time", "10d", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time must be a positive duration" in err and "'10d'" in err
    assert not out.exists()


# -- detect train --------------------------------------------------------------------------------------

def test_detect_budget_fits_epochs_and_cosine_survives_a_kill_and_takes_more_time(yolo_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = DetectConfig(**TINY_DETECT, dataset=f"yolo:{yolo_dir}", epochs=100, time="3.5s", out=str(run))
    EpochClock(monkeypatch, detect_trainer)
    with interrupt_after(detect_trainer, epochs=1), pytest.raises(KeyboardInterrupt):  # killed in epoch 2
        detect_trainer.train(cfg, log=lambda _: None)
    after_one = load_file(run / "last.pt")
    # one epoch of one second, 2.5 s left: 1 + 2 epochs; the schedule was rebuilt for 3
    assert after_one["epoch"] == 1 and after_one["config"]["epochs"] == 3
    assert after_one["time_budget"]["spent_s"] == pytest.approx(1.0)

    EpochClock(monkeypatch, detect_trainer)  # the clock of the resumed process starts again at 0
    result = detect_trainer.train(DetectConfig(resume=str(run), device="cpu"), log=lambda _: None)
    assert [int(r["epoch"]) for r in result.history] == [1, 2, 3]  # the spent second still counted
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["time"] == "3.5s"
    last = load_file(run / "last.pt")
    assert last["config"]["time"] == "3.5s" and last["time_budget"]["spent_s"] == pytest.approx(3.0)

    steps, warmup = 2, 2  # 8 images in batches of 4; warm-up 1 epoch
    expected = [1e-3 * cosine(0, warmup, 100 * steps)]  # epoch 1 ran on the first plan (100 epochs)
    expected += [1e-3 * cosine(e * steps, warmup, 3 * steps) for e in (1, 2)]
    assert lr_column(run) == pytest.approx(expected, rel=1e-6)
    assert all(group["lr"] == pytest.approx(0.0, abs=1e-12) for group in last["optimizer"]["param_groups"])

    # a finished run given more time: 3 s spent of 5.5, two more epochs, the schedule refitted to 5
    EpochClock(monkeypatch, detect_trainer)
    longer = detect_trainer.train(DetectConfig(resume=str(run), device="cpu", time="5.5s"), log=lambda _: None)
    assert len(longer.history) == 5 and load_file(run / "last.pt")["config"]["epochs"] == 5
    expected += [1e-3 * cosine(e * steps, warmup, 5 * steps) for e in (3, 4)]
    assert lr_column(run) == pytest.approx(expected, rel=1e-6)
    assert load_file(run / "last.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_detect_resume_with_more_epochs_stretches_the_cosine(yolo_dir, tmp_path):
    run = tmp_path / "run"
    detect_trainer.train(DetectConfig(**TINY_DETECT, dataset=f"yolo:{yolo_dir}", epochs=1, out=str(run)),
                         log=lambda _: None)
    detect_trainer.train(DetectConfig(resume=str(run), device="cpu", epochs=2), given={"resume", "device", "epochs"},
                         log=lambda _: None)
    steps = 2
    # the 1-epoch run warms up over 1 step (the warm-up leaves one step of decay), its cosine ended at 0;
    # epoch 2 starts at the top of a 2-epoch cosine, not at the old schedule's 0
    assert lr_column(run) == pytest.approx([1e-3 * cosine(0, 1, 1 * steps),
                                            1e-3 * cosine(steps, 2, 2 * steps)], rel=1e-6)


def test_detect_budget_stops_a_long_run_on_the_real_clock(yolo_dir, tmp_path):
    run = tmp_path / "run"
    seconds = 4.0
    result = detect_trainer.train(DetectConfig(**TINY_DETECT, dataset=f"yolo:{yolo_dir}", epochs=1000,
                                               time=f"{seconds}s", out=str(run)), log=lambda _: None)
    assert 1 <= len(result.history) < 1000
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    state = load_file(run / "last.pt")["time_budget"]
    mean_epoch = state["epochs_s"] / state["epochs_timed"]
    # it stopped because one more epoch would not fit, and not more than about an epoch late
    assert state["spent_s"] + mean_epoch > seconds
    assert state["spent_s"] < seconds + 2 * mean_epoch
    assert load_file(run / "last.pt")["config"]["epochs"] == len(result.history)


# -- train (classification) ----------------------------------------------------------------------------

def test_train_budget_ends_onecycle_at_its_final_rate(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = TrainConfig(**{**TINY_TRAIN, "epochs": 4}, time="2.5s", out=str(run))
    EpochClock(monkeypatch, trainer)
    result = trainer.train(cfg, log=lambda _: None)
    assert len(result.history) == 2 and yaml.safe_load((run / "config.yaml").read_text())["time"] == "2.5s"
    steps = 4  # 32 images, batch 8

    def onecycle_rates(epochs: int) -> list[float]:  # torch's schedule for a run of ``epochs``, per step
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
        total = epochs * steps
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=total,
                                                    pct_start=max(0.25, 2 / total), cycle_momentum=False)
        rates = [opt.param_groups[0]["lr"]]
        for _ in range(total - 1):
            opt.step()
            sched.step()
            rates.append(opt.param_groups[0]["lr"])
        return rates

    first, fitted = onecycle_rates(4), onecycle_rates(2)  # planned for 4 epochs, fitted to 2 after the first
    assert lr_column(run) == pytest.approx([first[0], fitted[steps]], rel=1e-6)
    # the one-cycle's last step is the run's last step: its final rate (max_lr / 25 / 1e4) came last
    scheduler = load_file(run / "last.pt")["scheduler"]
    assert scheduler["total_steps"] == scheduler["last_epoch"] == 2 * steps
    assert fitted[-1] == pytest.approx(0.02 / 25 / 1e4, rel=1e-6)


# -- the first epoch's early estimate ---------------------------------------------------------------------

class StepClock(EpochClock):
    """A clock that moves one second per training step and stands still otherwise."""

    def ticking(self, batches):
        for batch in batches:
            yield batch
            self.now += 1.0

    def epoch(self, model, batches, *args, **kwargs):
        inner = self

        class Ticking:  # the trainer's batches with their length, one second per batch taken
            def __len__(self):
                return len(batches)

            def __iter__(self):
                return inner.ticking(batches)

        return self.real(model, Ticking(), *args, **kwargs)


def test_a_first_epoch_longer_than_half_the_budget_is_estimated_early_and_still_decays(monkeypatch):
    """20 steps of 1 s per epoch, 25 s, planned for 100 epochs with a warm-up of one epoch: after the
    first 2 steps (a tenth) one epoch is all that fits, so the cosine is shortened to 20 steps, its warm-up
    to half of them (10), and the rate reaches 0 at the epoch's end instead of ending the warm-up there."""
    clock = [0.0]
    monkeypatch.setattr(budget, "clock", lambda: clock[0])
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = budget_schedule(optimizer, epochs=100, steps=20)
    timer = budget.TimeBudget(25.0)
    timer.begin_epoch()
    planned = {}

    def probe(steps_done):
        planned["epochs"] = budget.fit_first_epoch(timer, scheduler, steps_done, 20, 100)
        planned["at"] = steps_done

    rates = []
    for _ in timer.batches(range(20), on_probe=probe):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        clock[0] += 1.0
    assert planned == {"epochs": 1, "at": 2}
    assert rates[:2] == pytest.approx([0.1 * cosine(s, 20, 2000) for s in (0, 1)])  # the 100-epoch plan
    assert rates[2:] == pytest.approx([0.1 * cosine(s, 10, 20) for s in range(2, 20)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def budget_schedule(optimizer, epochs, steps):
    from backbonekit.engine.optim import build_scheduler

    return build_scheduler("cosine", optimizer, 0.1, epochs, steps, warmup_epochs=1.0)


def test_a_budget_that_fits_more_than_planned_or_a_stopped_clock_leaves_the_first_epoch_alone(monkeypatch):
    monkeypatch.setattr(budget, "clock", lambda: 0.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = budget_schedule(optimizer, epochs=3, steps=10)
    timer = budget.TimeBudget(1000.0)
    timer.begin_epoch()
    assert budget.fit_first_epoch(timer, scheduler, 1, 10, 3) == 3  # the clock has not moved: no estimate
    monkeypatch.setattr(budget, "clock", lambda: 1.0)
    assert budget.fit_first_epoch(timer, scheduler, 1, 10, 3) == 3  # 10 s epochs, 100 fit: keep 3
    assert scheduler.lr_lambdas[0].total == 30 and scheduler.lr_lambdas[0].warmup == 10


def test_detect_run_whose_one_epoch_fills_the_budget_ends_its_schedule_in_it(yolo_dir, tmp_path, monkeypatch):
    """2 steps of 1 s per epoch, 2.5 s, 100 epochs planned: the probe after step 1 fits one epoch, whose
    second step then decays to 0; without it the run would stop at the top of its warm-up."""
    run = tmp_path / "run"
    StepClock(monkeypatch, detect_trainer)
    result = detect_trainer.train(DetectConfig(**TINY_DETECT, dataset=f"yolo:{yolo_dir}", epochs=100, time="2.5s",
                                               out=str(run)), log=lambda _: None)
    last = load_file(run / "last.pt")
    assert len(result.history) == 1 and last["config"]["epochs"] == 1
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert last["scheduler"]["lr_lambdas"][0] == {"requested_warmup": 2, "total": 2, "warmup": 1}


def test_a_budget_given_on_resume_leaves_the_resumed_epoch_schedule_alone(yolo_dir, tmp_path, monkeypatch):
    """A run without a budget, resumed after epoch 1 of 2 with --time: the early estimate is the first epoch's
    alone, so the resumed epoch keeps the 2-epoch cosine (4 steps) instead of a schedule shortened to what
    fits from now on, counted as if from step 0."""
    run = tmp_path / "run"
    cfg = DetectConfig(**TINY_DETECT, dataset=f"yolo:{yolo_dir}", epochs=2, out=str(run))
    with interrupt_after(detect_trainer, epochs=1), pytest.raises(KeyboardInterrupt):
        detect_trainer.train(cfg, log=lambda _: None)
    StepClock(monkeypatch, detect_trainer)
    detect_trainer.train(DetectConfig(resume=str(run), device="cpu", time="1.5s"), log=lambda _: None)
    last = load_file(run / "last.pt")
    assert last["epoch"] == 2 and last["scheduler"]["lr_lambdas"][0]["total"] == 4
