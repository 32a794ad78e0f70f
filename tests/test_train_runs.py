"""Run folders: rerunning config.yaml, what --resume may change, one writer per folder, no folder left by a
failed start or written over the user's files; data prepared once per node; one-line image errors; the
training speed-ups against plain PyTorch."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from backbonekit import create_model
from backbonekit.checkpoint import load_file
from backbonekit.cli import main
from backbonekit.train import TrainConfig, train, trainer
from backbonekit.engine.config import config_keys
from backbonekit.engine.runs import LOCK_NAME, claim_run_folder
from backbonekit.train.config import RESUME_RULES
from helpers import TINY_TRAIN, interrupt_after

TINY = {**TINY_TRAIN, "epochs": 1, "lr": 0.1}
QUIET = dict(log=lambda _: None)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_file(a)["state_dict"], load_file(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(**TINY, out=str(out)), **QUIET)
    return out


@pytest.fixture
def run_copy(tmp_path, one_epoch_run) -> Path:
    """A copy of the trained run that a test may resume or extend."""
    return Path(shutil.copytree(one_epoch_run, tmp_path / "copy"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- config.yaml repeats the run (item 6) ----------------------------------------------------------

def test_rerunning_config_yaml_repeats_the_run_in_a_new_folder(tmp_path, one_epoch_run, monkeypatch):
    written = yaml.safe_load((one_epoch_run / "config.yaml").read_text())
    assert written["nproc"] == 1 and written["out"] is None and written["resume"] is None
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(one_epoch_run / "config.yaml")]) == 0
    rerun = tmp_path / "runs" / "resnet18-fake"  # the default folder: the file does not pin one
    assert_same_weights(one_epoch_run / "last.pt", rerun / "last.pt")
    assert untimed(load_file(rerun / "last.pt")["history"]) == untimed(load_file(one_epoch_run / "last.pt")["history"])
    assert (rerun / "config.yaml").read_text() == (one_epoch_run / "config.yaml").read_text()


# -- what --resume may change (item 5) -------------------------------------------------------------

def test_every_config_field_has_a_resume_rule():
    assert set(RESUME_RULES) == set(config_keys(TrainConfig))


@pytest.mark.parametrize("flags", [["--lr", "0.05"], ["--batch-size", "64"], ["--seed", "0"],
                                   ["--model", "darknet53"], ["--optimizer", "sgd", "--momentum", "0.8"]])
def test_resume_refuses_changes_even_to_the_default_value(run_copy, capsys, flags):
    """The run used lr 0.1, batch 8, seed 3, resnet18: each flag above gives another value, most of them
    the flag's default (which the old check skipped)."""
    before = (run_copy / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run_copy), *flags]) == 2
    err = one_error_line(capsys)
    changed = [f for f in flags if f.startswith("--") and f not in ("--optimizer",)]
    assert all(f"{f} " in err for f in changed) and "cannot resume" in err and "--pretrained" in err
    assert (run_copy / "last.pt").read_bytes() == before


def test_resume_through_the_python_api_says_which_fields_were_given(run_copy):
    with pytest.raises(ValueError, match=r"--lr 0.1 -> 0.05"):
        train(TrainConfig(resume=str(run_copy), lr=0.05), given={"lr"}, **QUIET)


def test_resume_accepts_local_options_and_unchanged_values(run_copy):
    result = train(TrainConfig(resume=str(run_copy), lr=0.1, device="cpu", workers=3, data_dir="elsewhere"),
                   given={"lr", "device", "workers", "data_dir", "resume"}, **QUIET)
    assert len(result.history) == 1  # the run was complete: nothing more to train


def test_resume_extends_epochs_on_the_longer_runs_schedule(tmp_path, one_epoch_run, run_copy, capsys):
    longer = train(TrainConfig(**{**TINY, "epochs": 2}, out=str(tmp_path / "two")), **QUIET)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2"]) == 0
    extended = load_file(run_copy / "last.pt")
    one = load_file(one_epoch_run / "last.pt")
    assert extended["epoch"] == 2 and extended["config"]["epochs"] == 2
    assert untimed(extended["history"])[0] == untimed(one["history"])[0]
    # the second epoch starts where a 2-epoch one-cycle schedule is after one epoch, and ends where it ends
    assert extended["history"][1]["lr"] == longer.history[1]["lr"]
    last_two = load_file(tmp_path / "two" / "last.pt")
    assert extended["optimizer"]["param_groups"][0]["lr"] == last_two["optimizer"]["param_groups"][0]["lr"]
    assert main(["train", "--resume", str(run_copy), "--epochs", "1"]) == 2
    assert "already completed 2 epochs" in capsys.readouterr().err


def test_resume_refuses_another_out(run_copy, tmp_path):
    with pytest.raises(ValueError, match="continues in its own folder"):
        train(TrainConfig(resume=str(run_copy), out=str(tmp_path / "elsewhere")), **QUIET)


# -- one writer per run folder (item 12) -----------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from backbonekit.engine.runs import claim_run_folder
with claim_run_folder(Path(sys.argv[1]), new=False):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_live_process(run_copy, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--resume", str(run_copy)]) == 2
        err = one_error_line(capsys)
        assert f"pid {holder.pid}" in err and "being written by another" in err
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            train(TrainConfig(**TINY, out=str(run_copy)), **QUIET)
    finally:
        holder.kill()
        holder.wait()
    with claim_run_folder(run_copy, new=False):  # the OS released the dead process's lock
        pass


def test_the_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = trainer.train_one_epoch
    seen = []

    def try_to_claim(*args, **kwargs):
        with pytest.raises(ValueError, match="being written by another"):
            with claim_run_folder(out, new=False):
                pass
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", try_to_claim)
    train(TrainConfig(**TINY, out=str(out)), **QUIET)
    assert seen == [1] and (out / LOCK_NAME).is_file()


# -- never over the user's files (item 13) and no folder from a failed start (item 17) --------------

@pytest.mark.parametrize("files", [{"config.yaml": "my: notes\n", "best.pt": "mine"}, {"best.pt": "mine"},
                                   {"notes.txt": "x"}])
def test_a_new_run_refuses_a_folder_of_other_files(tmp_path, capsys, files):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    assert main(["train", "--model", "resnet18", "--dataset", "fake:32", "--epochs", "1", "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "not a backbonekit run" in err and str(out) in err
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # untouched, no lock file left


def failing_in_the_first_epoch():
    return interrupt_after(trainer, epochs=0, error=RuntimeError("stopped in the first epoch"))


@pytest.mark.parametrize("failure", ["first_epoch", "missing_data"])
def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(tmp_path, monkeypatch, failure):
    monkeypatch.chdir(tmp_path)
    if failure == "first_epoch":
        cfg = TrainConfig(**TINY)
        with failing_in_the_first_epoch(), pytest.raises(RuntimeError, match="first epoch"):
            train(cfg, **QUIET)
    else:  # the folder is claimed (locked) before the data is read
        cfg = TrainConfig(**{**TINY, "dataset": "cifar10", "data_dir": str(tmp_path / "none"), "download": False})
        with pytest.raises(FileNotFoundError, match="cifar10 not found"):
            train(cfg, **QUIET)
    stem = f"resnet18-{cfg.dataset.split(':')[0]}"
    assert list((tmp_path / "runs").iterdir()) == [] and trainer.default_out(cfg) == Path("runs") / stem
    if failure == "first_epoch":
        assert train(cfg, **QUIET).out == Path("runs") / stem  # the next run takes the name, not ...-2


def test_a_failed_start_in_the_users_empty_folder_keeps_the_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with failing_in_the_first_epoch(), pytest.raises(RuntimeError):
        train(TrainConfig(**TINY, out=str(out)), **QUIET)
    assert out.is_dir() and list(out.iterdir()) == []


# -- data prepared once per node (item 9) ----------------------------------------------------------

def test_each_node_has_one_preparing_rank():
    from backbonekit.engine.dist import preparation_round

    for nodes, per_node in ((1, 1), (1, 4), (3, 2), (2, 8)):
        rounds = [[preparation_round(n * per_node + i, i) for i in range(per_node)] for n in range(nodes)]
        assert rounds[0][0] == 0
        assert all(sum(r < 2 for r in node) == 1 for node in rounds)  # one preparer per node, never two


@pytest.mark.parametrize("shared_filesystem", [False, True])
def test_data_is_downloaded_once_per_node_without_a_shared_filesystem(tmp_path, shared_filesystem):
    """Two nodes of two ranks (threads with torchrun's RANK/LOCAL_RANK numbering, one barrier over all)."""
    from backbonekit.engine.dist import per_node_first

    barrier = threading.Barrier(4, timeout=30)
    downloads, lock = [], threading.Lock()

    def load(rank: int, local: int) -> str:
        node_dir = tmp_path / ("shared" if shared_filesystem else f"node{rank // 2}")
        node_dir.mkdir(exist_ok=True)
        archive = node_dir / "data.bin"
        if not archive.exists():
            with lock:
                downloads.append(rank)
            time.sleep(0.05)  # a download takes time: a racing rank on the same node would start one too
            archive.write_text("data")
        return archive.read_text()

    results, errors = {}, []

    def rank_thread(rank: int) -> None:
        try:
            results[rank] = per_node_first(lambda: load(rank, rank % 2), ranks=(rank, rank % 2), wait=barrier.wait)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=rank_thread, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {r: "data" for r in range(4)}
    assert sorted(downloads) == ([0] if shared_filesystem else [0, 2])  # rank 2 is node 1's LOCAL_RANK 0


# -- predict: one line for an image PIL refuses as too large (item 14) ------------------------------

def test_predict_refuses_a_decompression_bomb_in_one_line(tmp_path, one_epoch_run, capsys):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("1", (20000, 20000)).save(big)  # 4e8 pixels, a 50 KB file: over PIL's 2 x 89.5M-pixel limit
    assert big.stat().st_size < 1_000_000
    assert main(["predict", str(one_epoch_run / "best.pt"), str(big)]) == 2
    err = one_error_line(capsys)
    assert f"cannot read image {big}" in err and "400000000 pixels" in err


# -- the training speed-ups against plain PyTorch ----------------------------------------------------

def random_resnet18() -> nn.Module:
    model = create_model("resnet18", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial affine terms (training uses batch statistics)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def plain_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """What build_optimizer should be: torch's for-loop implementation, weight decay on weights only."""
    groups = [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 5e-4},
              {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, foreach=False, fused=False)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(groups, lr=lr, foreach=False, fused=False)


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> float:
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("adamw", 1e-3), ("adam", 1e-3)])
def test_training_speed_ups_give_plain_pytorchs_steps(name, lr):
    """``backbonekit train``'s model and optimizer (padding-aware convs, fused optimizer kernels) against
    torch.nn.Conv2d and torch's for-loop optimizer: five steps on the same batches, each from the same
    weights and optimizer state (the plain run's).

    Why per step: the trajectory itself amplifies rounding. At 32x32 ResNet-18's last stage is 1x1, so its
    BatchNorms normalise 16 values per channel, some nearly constant after ReLU; the cropped convs (which add
    no padding zeros) round differently from the full ones by ~1e-6, and over 5 whole steps this grew to
    ~0.1 in the loss (SGD, lr 0.01), as large as plain fp32 against fp64. One step is rounding only:
    measured 1e-7 on the loss, 2e-6 on gradients and, for SGD, 1.2e-6 on weights (each relative to the
    tensor's scale); the bounds allow ~10x that, while a wrong tap or update rule (Nesterov dropped: 0.7)
    is far outside. Adam(W) divides by sqrt(second moment): an entry whose true gradient is ~0 gets a
    rounding-level gradient whose sign sets a step of up to ~lr, so single entries are held to 2 x lr and
    each tensor's mean gap to 1e-4 x lr (measured 3e-6 x lr; betas 0.9/0.99 instead of 0.9/0.999: 0.5 x lr).
    """
    from backbonekit.optimize import PaddingAwareConv2d
    from backbonekit.engine.optim import build_optimizer

    plain = random_resnet18()
    fast = trainer._prepare_model(copy.deepcopy(plain), TrainConfig(channels_last=False), torch.device("cpu"))
    fast_opt = build_optimizer(name, fast, lr, 5e-4)
    plain_opt = plain_optimizer(name, plain, lr)
    assert isinstance(fast.layer4[1].conv1, PaddingAwareConv2d) and fast_opt.defaults.get("fused")
    shapes = []
    fast.layer4[1].conv1.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[-2:])))
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        assert sgd_step(fast, fast_opt, x, y) == pytest.approx(sgd_step(plain, plain_opt, x, y), rel=1e-5)
        for (key, a), b in zip(fast.named_parameters(), plain.parameters()):
            assert relative_gap(a.grad, b.grad) < 2e-5, key
            if name == "sgd":
                assert relative_gap(a, b) < 1e-5, key
            else:
                gap = (a - b).detach().abs()
                assert float(gap.max()) <= 2 * lr and float(gap.mean()) <= 1e-4 * lr, key
        with torch.no_grad():  # the next step from the plain run's state
            fast.load_state_dict(plain.state_dict())
            for a, b in zip(fast.parameters(), plain.parameters()):
                for k, value in plain_opt.state[b].items():
                    fast_opt.state[a][k].copy_(value)
    assert shapes[0] == (1, 1)  # the 3x3 conv ran on a 1x1 map: only its centre tap was used


def test_evaluation_folder_is_inside_a_run_folder_and_beside_a_file(tmp_path):
    from backbonekit.engine.runs import evaluation_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    assert evaluation_folder(run, "digits", "test") == run / "eval-digits-test"
    assert evaluation_folder(run / "best.pt", "imagefolder:/data/x y", "val") == run / "eval-imagefolder_data_x_y-val"
