"""DistributedDataParallel: two CPU processes with gloo, launched through torchrun's API."""

from __future__ import annotations

import os

import pytest
import torch

from backbonekit.checkpoint import load_file
from backbonekit.train import TrainConfig
from backbonekit.engine.launch import DistributedFailure, launch
from helpers import TINY_TRAIN, interrupt_after

pytestmark = pytest.mark.slow  # two spawned processes importing torch: ~10-30 s on 2 cores

# fake:30 -> 30 train images (15 per rank) and 7 validation images (shards of 4 and 3)
DDP = {**TINY_TRAIN, "dataset": "fake:30", "batch_size": 5, "seed": 1}


def ddp_worker(cfg_dict: dict, folders: list[str]) -> dict:
    """Each rank runs in its own working directory, so a file rank 1 wrote would show up in its folder."""
    from backbonekit.engine import dist
    from backbonekit.train import train

    os.chdir(folders[int(os.environ["RANK"])])
    try:
        result = train(TrainConfig(**cfg_dict), log=lambda _: None)
        return {"state": {k: v.clone() for k, v in result.model.state_dict().items()},
                "val_count": result.val_count, "history": result.history,
                "world": dist.world_size(), "sync_bn": any(isinstance(m, torch.nn.SyncBatchNorm)
                                                           for m in result.model.modules())}
    finally:
        dist.cleanup()


def failing_worker(cfg_dict: dict, folder: str, failure: str) -> None:
    """Rank 1 fails in its first epoch (an exception, or a NaN in its weights); rank 0 must not hang."""
    from backbonekit.engine import dist
    from backbonekit.train import trainer

    os.chdir(folder)
    real = trainer.train_one_epoch

    def rank1_fails(model, *args, **kwargs):
        if os.environ["RANK"] == "1":
            if failure == "exception":
                raise RuntimeError("rank 1 cannot go on")
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)

    trainer.train_one_epoch = rank1_fails
    try:
        trainer.train(TrainConfig(**cfg_dict), log=lambda _: None)
    finally:
        dist.cleanup()


def rank_folders(root) -> list:
    folders = [root / "rank0", root / "rank1"]
    for f in folders:
        f.mkdir()
    return folders


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folders = rank_folders(tmp_path_factory.mktemp("ddp"))
    return folders, launch(ddp_worker, (TrainConfig(**DDP, out="run").to_dict(), [str(f) for f in folders]),
                           nproc=2, threads_per_process=1)


def test_two_gloo_ranks_agree_cover_the_val_set_once_and_only_rank0_writes(ddp_run):
    folders, results = ddp_run
    r0, r1 = results[0], results[1]
    assert r0["world"] == r1["world"] == 2 and not r0["sync_bn"]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert r0["val_count"] == r1["val_count"] == 7  # every validation image once: no duplicate, none dropped
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in r["history"]] for r in (r0, r1)]
    assert untimed[0] == untimed[1]  # reduced metrics agree on every rank
    assert list(folders[1].rglob("*")) == []  # rank 1 wrote nothing
    assert {"last.pt", "best.pt", "metrics.csv", "report.html"} <= {p.name for p in (folders[0] / "run").iterdir()}
    saved = load_file(folders[0] / "run" / "last.pt")["state_dict"]
    assert not any(k.startswith("module.") for k in saved)  # saved unwrapped: loadable without DDP
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)


NAN_MESSAGE = r"rank \d failed.*loss became (nan|non-finite) on rank 1 at epoch 1, step 1"


@pytest.mark.parametrize("failure, message", [("exception", "rank 1 failed.*rank 1 cannot go on"),
                                               ("nan", NAN_MESSAGE)])
def test_a_failing_rank_stops_the_whole_job(tmp_path, failure, message):
    with pytest.raises(DistributedFailure, match=message):
        launch(failing_worker, (TrainConfig(**DDP, out="run").to_dict(), str(tmp_path), failure), nproc=2,
               threads_per_process=1)


def interrupted_worker(cfg_dict: dict, folders: list[str]) -> None:
    """Every rank stops when its second epoch starts (as if the job were killed after epoch 1)."""
    from backbonekit.train import trainer

    with interrupt_after(trainer, epochs=1, error=RuntimeError("interrupted")):
        ddp_worker(cfg_dict, folders)


def test_distributed_resume_repeats_the_uninterrupted_run(tmp_path, ddp_run):
    _, full = ddp_run
    folders = rank_folders(tmp_path)
    with pytest.raises(DistributedFailure, match="interrupted"):
        launch(interrupted_worker, (TrainConfig(**DDP, out="run").to_dict(), [str(f) for f in folders]), nproc=2,
               threads_per_process=1)
    assert load_file(folders[0] / "run" / "last.pt")["epoch"] == 1
    # every rank reads the checkpoint (an absolute path here; that only rank 0 writes is checked above)
    results = launch(ddp_worker, (TrainConfig(resume=str(folders[0] / "run")).to_dict(), [str(f) for f in folders]),
                     nproc=2, threads_per_process=1)
    for rank in (0, 1):
        for key, value in full[0]["state"].items():
            assert torch.equal(results[rank]["state"][key], value), key
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in r["history"]] for r in (full[0], results[0])]
    assert untimed[0] == untimed[1]


def test_resume_with_another_number_of_processes_is_refused(tmp_path, ddp_run):
    from backbonekit.train import train

    folders, _ = ddp_run
    with pytest.raises(ValueError, match="trained with 2 process"):
        train(TrainConfig(resume=str(folders[0] / "run")))


def test_cli_nproc_reports_a_failing_rank_in_one_line(tmp_path, capfd):
    from backbonekit.cli import main

    code = main(["train", "--nproc", "2", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download",
                 "--out", str(tmp_path / "run")])
    err_lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("backbonekit train")]
    assert code == 2
    assert err_lines[-1].startswith("backbonekit train: error: distributed run stopped: rank 0 failed (exit code 2")
    assert err_lines[0].startswith("backbonekit train (rank 0): error: cifar10 not found")  # the rank's own line
    assert "cifar-10-batches-py" in err_lines[0] and len(err_lines) == 2


def test_rerunning_a_distributed_runs_config_yaml_repeats_it(tmp_path, ddp_run, monkeypatch):
    """config.yaml records the real process count (2, not the 1 each rank was given) and no folder, so
    ``backbonekit train --config RUN/config.yaml`` launches two processes again, into a new folder."""
    import yaml

    from backbonekit.cli import main

    folders, _ = ddp_run
    written = yaml.safe_load((folders[0] / "run" / "config.yaml").read_text())
    assert written["nproc"] == 2 and written["out"] is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in the original run: the same kernels, the same sums
    assert main(["train", "--config", str(folders[0] / "run" / "config.yaml")]) == 0
    first, again = (load_file(p / "last.pt") for p in (folders[0] / "run", tmp_path / "runs" / "resnet18-fake"))
    assert again["world_size"] == 2
    for key, value in first["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in c["history"]] for c in (first, again)]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_the_reported_failure_is_the_cause_not_a_rank_that_lost_its_peer(order):
    from types import SimpleNamespace

    from backbonekit.engine.launch import root_failure

    lost = SimpleNamespace(message={"message": "RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed "
                                               "by peer [127.0.0.1]:18340"}, timestamp=100, exitcode=1)
    cause = SimpleNamespace(message={"message": "RuntimeError: rank 1 cannot go on"}, timestamp=101, exitcode=1)
    failures = {0: lost, 1: cause} if order == (0, 1) else {1: cause, 0: lost}
    assert root_failure(failures) == (1, cause)  # later, but the cause
    assert root_failure({0: lost}) == (0, lost)  # no other: the only failure
    first = SimpleNamespace(message={"message": "ValueError: bad"}, timestamp=99, exitcode=1)
    assert root_failure({**failures, 2: first})[0] == 2  # of two causes, the earliest
