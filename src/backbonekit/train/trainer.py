"""``train``, ``evaluate_checkpoint`` and ``predict``: the run folder, checkpoints, resume and reports."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
from torch import Tensor, nn

from .. import create_model, weights
from ..optimize import prepare_for_training
from .._text import few, first_line
from ..checkpoint import CheckpointError, atomic_save, load_file
from ..pretrained import weights_file
from ..engine import dist
from ..engine.budget import TimeBudget, fast_forward, fit_first_epoch, refit_schedule
from ..engine.config import write_config
from ..engine.device import resolve_amp, resolve_device, set_determinism, unwrap
from ..engine.optim import build_optimizer, build_scheduler, epoch_progress
from ..engine.report import write_metrics
from ..engine.runs import (RunResult, check_resumed_world, default_out, evaluation_folder, evaluation_output,
                           read_training_checkpoint, resume_checkpoint, resumed_config, run_in_folder)
from .config import RESUME_RULES, TrainConfig
from .data import Batches, DataBundle, Normalizer, load_dataset
from .engine import EvalResult, evaluate, train_one_epoch

METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "time_s")
EVAL_BATCH_SIZE = 256
__all__ = ["RESUME_RULES", "TrainResult", "default_out", "evaluate_checkpoint", "predict", "resume_checkpoint",
           "train"]


@dataclass
class TrainResult(RunResult):
    best_acc: float  # final: the EvalResult of best.pt
    val_count: int  # validation images evaluated in the last epoch, over all ranks


# -- progress ---------------------------------------------------------------------------------

def epoch_line(row: dict[str, float], epochs: int) -> str:
    return (f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
            f"  val loss {row['val_loss']:.4f} top1 {100 * row['val_top1']:.2f}%"
            + (f" top5 {100 * row['val_top5']:.2f}%" if "val_top5" in row else "") +
            f"  lr {row['lr']:.3g}  {row['time_s']:.1f}s")


# -- checkpoints --------------------------------------------------------------------------------

def checkpoint_dict(model: nn.Module, cfg: TrainConfig, data: DataBundle, model_kwargs: dict[str, Any], *,
                    epoch: int, history: list[dict[str, float]], best_acc: float,
                    training_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """backbonekit checkpoint: tensors and plain Python values only (loadable with weights_only=True)."""
    ckpt = {"format": "backbonekit", "model": cfg.model, "model_kwargs": dict(model_kwargs),
            "num_classes": data.num_classes, "state_dict": unwrap(model).state_dict(),
            "preprocessing": data.preprocessing(), "config": cfg.to_dict(), "epoch": epoch,
            "history": [dict(r) for r in history], "best_acc": best_acc, "world_size": dist.world_size()}
    if training_state:
        ckpt.update(training_state)
    return ckpt


def rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


# -- training -----------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, log: Callable[[str], None] = print,
          given: Collection[str] | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``, writing the run folder ``cfg.out``; see docs/training.md.

    With ``cfg.resume`` (a run folder or last.pt) the run continues exactly where it stopped, with the
    saved config. ``given`` names the fields the caller set explicitly (the command line passes its flags
    and config-file keys); each is checked against the saved run by ``config.RESUME_RULES`` (refused when it
    would change what the run computes). Without ``given``, the fields that differ from TrainConfig's
    defaults count as given.
    """
    cfg, resumed = _resolve_config(cfg, given)
    device = resolve_device(cfg.device)
    if device.type == "cpu":  # denormals make the first steps of a zero-initialised residual net several times slower
        torch.set_flush_denormal(True)
    dist.setup(device.type)
    _check_process_count(cfg, resumed)
    return run_in_folder(cfg, resumed, lambda cfg, out: _train(cfg, out, resumed, device, log))


def _train(cfg: TrainConfig, out: Path, resumed: dict[str, Any] | None, device: torch.device,
           log: Callable[[str], None]) -> TrainResult:
    budget = TimeBudget.start(cfg.time, resumed.get("time_budget") if resumed else None)
    amp_dtype = resolve_amp(cfg.amp, device)
    if cfg.sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn needs --device cuda: PyTorch's SyncBatchNorm has no CPU implementation "
                         f"(found device {device.type})")
    set_determinism(cfg.seed, cfg.deterministic, device)
    data = _load_data_once(cfg, log)
    cfg = dataclasses.replace(cfg, input_size=data.image_size, crop_padding=data.crop_padding, hflip=data.hflip,
                              nproc=dist.world_size())
    if dist.is_main():
        # the file repeats the run: no --out (a rerun writes a new folder), the real process count
        write_config(dataclasses.replace(cfg, out=None), out / "config.yaml")
    if data.in_memory:
        data.train, data.val = data.train.to(device), data.val.to(device)
    pretrained = (weights.read_weights(weights_file(cfg.pretrained, cfg.model))  # a file, URL or tag; read once
                  if cfg.pretrained and not resumed else None)
    model_kwargs = (dict(resumed["model_kwargs"]) if resumed else
                    weights.architecture_kwargs(*pretrained) if pretrained else {})
    init_kwargs = {"zero_init_residual": True} if cfg.zero_init_residual and not cfg.pretrained else {}
    model = create_model(cfg.model, num_classes=data.num_classes, pretrained=pretrained, **model_kwargs, **init_kwargs)
    model = _prepare_model(model, cfg, device)
    normalize = Normalizer(data.mean, data.std, device, channels_last=cfg.channels_last and device.type == "cuda")

    def batches(split: str, epoch: int) -> Batches:
        train_split = split == "train"
        return Batches(data.train if train_split else data.val,
                       cfg.batch_size if train_split else max(cfg.batch_size, EVAL_BATCH_SIZE),
                       normalize, device, cfg.seed, epoch, train=train_split, crop_padding=data.crop_padding,
                       hflip=data.hflip, rank=dist.rank(), world=dist.world_size(), workers=cfg.workers)

    steps = len(batches("train", 0))
    if steps == 0:
        raise ValueError(f"dataset {cfg.dataset} has too few training images ({len(data.train)}) for one step")
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)

    def schedule(epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return build_scheduler(cfg.schedule, optimizer, cfg.lr, epochs, steps, cfg.warmup_epochs)

    scheduler = schedule(cfg.epochs)

    def first_epoch_probe(steps_done: int) -> None:  # the plan from the first epoch's first steps (engine.budget)
        nonlocal cfg
        cfg = dataclasses.replace(cfg, epochs=fit_first_epoch(budget, scheduler, steps_done, steps, cfg.epochs))

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    history: list[dict[str, float]] = []
    best_acc, start_epoch, val_count = -1.0, 0, 0
    if resumed:
        same_length = cfg.epochs == resumed["config"]["epochs"]
        start_epoch, history, best_acc = _restore(resumed, model, optimizer, scheduler if same_length else None,
                                                  scaler, device)
        if not same_length:  # --epochs changed: the schedule for the new length, at the step the run reached
            fast_forward(scheduler, start_epoch * steps)
        if dist.is_main():
            log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
    # a resumed run with a budget: the epochs the time left allows (a new --time may give more, or none)
    epochs, scheduler = refit_schedule(budget, cfg.epochs, start_epoch, scheduler, schedule, epoch_ended=False)
    cfg = dataclasses.replace(cfg, epochs=epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss = nn.CrossEntropyLoss()

    def save(epoch: int, improved: bool) -> None:
        if not dist.is_main():
            return
        common = dict(epoch=epoch, history=history, best_acc=best_acc)
        if improved:
            atomic_save(checkpoint_dict(model, cfg, data, model_kwargs, **common), out / "best.pt")
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler else None, "rng": rng_state(device),
                 "time_budget": budget.state() if budget is not None else None}
        atomic_save(checkpoint_dict(model, cfg, data, model_kwargs, **common, training_state=state), out / "last.pt")
        write_metrics(out / "metrics.csv", history, METRIC_FIELDS)

    epoch = start_epoch
    while epoch < cfg.epochs and not (budget is not None and budget.expired()):
        lr = optimizer.param_groups[0]["lr"]
        train_batches = batches("train", epoch)
        if budget is not None:
            budget.begin_epoch()
            train_batches = budget.batches(train_batches, on_probe=first_epoch_probe if epoch == 0 else None)
        stats = _train_epoch(model, train_batches, optimizer, scheduler, loss_fn, cfg, device, amp_dtype, scaler,
                             epoch, out)
        dist.broadcast_buffers(unwrap(model))  # every rank evaluates (and keeps) rank 0's BatchNorm statistics
        ev = evaluate(unwrap(model), batches("val", epoch), eval_loss, device=device, amp_dtype=amp_dtype)
        row = {"epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": ev.loss,
               **{f"val_{k}": v for k, v in ev.accuracies().items()}, "lr": lr, "time_s": round(stats.seconds, 3)}
        history.append(row)
        val_count = ev.count
        improved = ev.top1 > best_acc
        best_acc = max(best_acc, ev.top1)
        epoch += 1
        epochs, scheduler = refit_schedule(budget, cfg.epochs, epoch, scheduler, schedule)
        cfg = dataclasses.replace(cfg, epochs=epochs)  # the checkpoint records the plan a resume continues
        save(epoch, improved)
        if dist.is_main():
            log(epoch_line(row, cfg.epochs))
    final = None
    if dist.is_main():
        final = _final_report(out, model, data, batches, eval_loss, device, amp_dtype, log)
    dist.barrier()
    return TrainResult(out=out, history=history, final=final, model=unwrap(model), best_acc=best_acc,
                       val_count=val_count)


def _resolve_config(cfg: TrainConfig, given: Collection[str] | None) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to run and the checkpoint to resume from (``None`` for a new run)."""
    if not cfg.resume:
        return cfg, None
    ckpt_path = resume_checkpoint(cfg.resume)
    resumed = read_training_checkpoint(ckpt_path)
    return resumed_config(resumed["config"], cfg, given, ckpt_path.parent, ckpt_path, int(resumed["epoch"]),
                          RESUME_RULES), resumed


def _check_process_count(cfg: TrainConfig, resumed: dict[str, Any] | None) -> None:
    check_resumed_world(resumed)
    world = dist.world_size()
    if cfg.nproc not in (1, world):  # 1: not set (torchrun decides)
        raise ValueError(f"nproc {cfg.nproc}: expected the number of processes running this training ({world}); "
                         f"start them with backbonekit train --nproc {cfg.nproc} or torchrun")


def _load_data_once(cfg: TrainConfig, log: Callable[[str], None]) -> DataBundle:
    """Rank 0 loads (and downloads if needed) first, then the first rank of every other node, then the
    rest: each node prepares its files once, without a shared filesystem too."""
    return dist.per_node_first(lambda: load_dataset(cfg.dataset, cfg.data_dir, cfg.input_size, cfg.crop_padding,
                                                    cfg.hflip, cfg.download, skip_bad_images=cfg.skip_bad_data,
                                                    log=log if dist.is_main() else None))


def _prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    # exact speed-ups only: fused optimizers (engine) and convs that skip padding-only taps (1x1 maps at 32x32)
    model = prepare_for_training(model.to(device), channels_last=device.type == "cuda" and cfg.channels_last)
    if dist.is_distributed():
        if cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _restore(ckpt: dict[str, Any], model: nn.Module, optimizer, scheduler, scaler, device: torch.device):
    try:
        unwrap(model).load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume: the checkpoint does not fit the model/optimizer "
                              f"({first_line(exc, 200, lines=None)})") from None
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return int(ckpt["epoch"]), [dict(r) for r in ckpt["history"]], float(ckpt["best_acc"])


def _train_epoch(model, batches: Batches, optimizer, scheduler, loss_fn, cfg: TrainConfig, device, amp_dtype,
                 scaler, epoch: int, out: Path):
    with epoch_progress(len(batches), epoch, cfg.epochs, out) as bar:
        return train_one_epoch(model, batches, optimizer, scheduler, loss_fn, device=device, amp_dtype=amp_dtype,
                               scaler=scaler, grad_clip=cfg.grad_clip, progress=bar, epoch=epoch)


def _final_report(out: Path, model: nn.Module, data: DataBundle, batches, loss_fn, device, amp_dtype,
                  log: Callable[[str], None]) -> EvalResult:
    """Evaluate best.pt on the whole validation set (rank 0 alone) and write the report files."""
    from . import report

    best = load_file(out / "best.pt")
    net = copy.deepcopy(unwrap(model))  # the trained model itself keeps its last-epoch weights
    net.load_state_dict(best["state_dict"])
    val = batches("val", 0)
    val.rank, val.world = 0, 1
    ev = evaluate(net, val, loss_fn, device=device, amp_dtype=amp_dtype, reduce=False)
    report.write_evaluation(out, ev, data, title=f"best.pt (epoch {best['epoch']}) on {data.name} test split")
    report.write_run_report(out)
    log(f"best.pt (epoch {best['epoch']}): test loss {ev.loss:.4f} {ev.summary()} "
        f"on {ev.count} images; report: {out / 'report.html'}")
    return ev


# -- evaluate and predict saved models ------------------------------------------------------------

def load_trained_model(checkpoint: str | os.PathLike, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint written by ``train`` (best.pt / last.pt), with its preprocessing."""
    ckpt = load_file(checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "backbonekit" or "preprocessing" not in ckpt:
        raise CheckpointError(f"{checkpoint}: expected a best.pt/last.pt written by backbonekit train "
                              f"(format 'backbonekit' with preprocessing), found another kind of file")
    model = create_model(ckpt["model"], num_classes=int(ckpt["num_classes"]),
                         pretrained=weights.weights_from_checkpoint(ckpt, checkpoint))  # the file is read once
    return model.to(device).eval(), ckpt


def evaluation_batches(prep: dict[str, Any], name: str, split: str, data_dir: str | os.PathLike, download: bool,
                       dev: torch.device, batch_size: int) -> tuple[DataBundle, Batches]:
    """The dataset's ``split`` prepared as the model's training prepared test images (``prep``: a
    checkpoint's preprocessing: size, classes, mean/std), as evaluation batches; ``data.val`` is that split."""
    data = load_dataset(name, data_dir, prep["image_size"], 0, False, download)
    if data.classes != list(prep["classes"]):
        raise ValueError(f"dataset {name} has classes {few(data.classes, 4)}, the model was trained on "
                         f"{few(prep['classes'], 4)}")
    data.mean, data.std = tuple(prep["mean"]), tuple(prep["std"])
    if split == "train":
        data.val = data.train
    if data.in_memory:
        data.val = data.val.to(dev)
    return data, Batches(data.val, batch_size, Normalizer(data.mean, data.std, dev), dev, 0, 0, train=False)


def evaluate_checkpoint(checkpoint: str | os.PathLike, *, dataset: str | None = None, split: str = "test",
                        force: bool = False,  # ``out`` as runs.evaluation_output allows; force: over other files
                        data_dir: str = "data", device: str = "auto", batch_size: int = EVAL_BATCH_SIZE,
                        out: str | os.PathLike | None = None, download: bool = True,
                        log: Callable[[str], None] = print) -> EvalResult:
    """The training report (classification report, confusion matrix, predictions grid) for a saved model."""
    from . import report

    if split not in ("test", "train"):
        raise ValueError(f"--split must be test or train, found {split!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, found {batch_size}")
    dev = resolve_device(device)
    model, ckpt = load_trained_model(checkpoint, dev)
    name = dataset or ckpt["preprocessing"]["dataset"]
    out = evaluation_output(out or evaluation_folder(checkpoint, name, split), force=force)  # before the work
    data, batches = evaluation_batches(ckpt["preprocessing"], name, split, data_dir, download, dev, batch_size)
    ev = evaluate(model, batches, nn.CrossEntropyLoss(), device=dev, reduce=False)
    report.write_evaluation(out, ev, data, title=f"{checkpoint} on {name} {split} split")
    log(f"{checkpoint} on {name} {split}: loss {ev.loss:.4f} {ev.summary()} ({ev.count} images); report in {out}")
    return ev




def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """An image file as uint8 (3, size, size): read by :func:`backbonekit.images.read_rgb` (RGB, upright),
    resized like training."""
    from torchvision.transforms.functional import resize

    from ..images import read_rgb

    tensor = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1)
    return resize(tensor, [size, size], antialias=True)


def predict(checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], *, topk: int = 5,
            device: str = "auto") -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file."""
    dev = resolve_device(device)
    model, ckpt = load_trained_model(checkpoint, dev)
    prep = ckpt["preprocessing"]
    batch = torch.stack([load_image(p, int(prep["image_size"])) for p in images]).to(dev)
    with torch.no_grad():
        probs = model(Normalizer(prep["mean"], prep["std"], dev)(batch)).float().softmax(1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [[(prep["classes"][i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)]
