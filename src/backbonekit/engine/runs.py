"""The run folder: its default name, the one process that may write it, and what a resume may change."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping, TypeVar

from . import dist
from .config import renamed_keys

if TYPE_CHECKING:
    from torch import nn

Result = TypeVar("Result")

LOCK_NAME = ".backbonekit.lock"
FAILED_START_FILES = ("config.yaml", "best.pt", "metrics.csv")  # what a run writes before its first last.pt

# What ``--resume`` does with an option the user gives again (docs/training.md, "Resume"); each trainer has a
# table of its fields (``train.config.RESUME_RULES``, ``DETECT_RESUME_RULES``):
#   FIXED  - part of what the run computes: it must equal the saved value, or the continuation would not be
#            the run that was started (the schedule, the shards, the weights' history all depend on it);
#   LOCAL  - where or how this process runs, not what it computes: taken from the command line;
#   EXTEND - epochs: may grow (or shrink to no fewer than the epochs done); the schedule is recomputed.
# ``time`` (the wall-clock budget) is LOCAL: a new budget replaces the saved one, the time spent still counts.
FIXED, LOCAL, EXTEND = "fixed", "local", "extend"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class RunResult:
    """What a finished ``train`` returns (each trainer adds its best figure)."""

    out: Path
    history: list[dict[str, float]]
    final: Any  # best.pt on the whole validation set (rank 0; None on other ranks)
    model: nn.Module  # the trained model after the last epoch (unwrapped from DDP)


def default_out(cfg: Any) -> Path:
    """``runs/MODEL-DATASET`` for a config with ``model`` and ``dataset``, numbered when that folder exists
    and is not empty."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.model}-{cfg.dataset.split(':')[0]}")
    out, n = Path("runs") / stem, 1
    while out.exists() and (not out.is_dir() or any(out.iterdir())):
        n += 1
        out = Path("runs") / f"{stem}-{n}"
    return out


def resume_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (its last.pt) or a checkpoint file."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() else path


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A last.pt that a run can continue from (model, optimizer and schedule states, epoch, history)."""
    from ..checkpoint import CheckpointError, load_file

    ckpt = load_file(path)
    needed = ("config", "state_dict", "optimizer", "scheduler", "epoch", "history")
    if not isinstance(ckpt, dict) or ckpt.get("format") != "backbonekit" or any(k not in ckpt for k in needed):
        raise CheckpointError(f"cannot resume from {path}: expected a last.pt written by backbonekit train "
                              f"(with {', '.join(needed)}), found another kind of file")
    return ckpt


def best_checkpoint(spec: str | os.PathLike, command: str = "backbonekit train") -> Path:
    """A run folder's best.pt, or ``spec`` itself when it is not a folder (one CheckpointError line for
    a folder without best.pt; ``command`` names what writes such folders)."""
    from ..checkpoint import CheckpointError

    path = Path(spec)
    if not path.is_dir():
        return path
    if not (path / "best.pt").is_file():
        raise CheckpointError(f"run folder {spec} has no best.pt: expected a finished `{command}` run")
    return path / "best.pt"


def refuse_missing_checkpoint(spec: str | os.PathLike, names: Collection[str]) -> None:
    """One CheckpointError line for ``spec`` when it names neither a file or folder that exists nor one of
    ``names`` (registered models) or a published tag of one, but looks like a path (a folder in it, or a
    file extension)."""
    from ..checkpoint import CheckpointError

    text = str(spec)
    if text in names or text.split(".", 1)[0] in names or Path(text).exists():  # a model, a tag (resnet50.tv2_in1k)
        return
    if Path(text).name != text or Path(text).suffix:
        raise CheckpointError(f"checkpoint not found: expected a file or run folder at {text}")


def given_fields(cfg: Any, given: Collection[str] | None) -> set[str]:
    """The fields the caller set; without ``given`` (a plain config), those that differ from the defaults."""
    if given is not None:
        return set(given)
    return {f.name for f in fields(cfg) if getattr(cfg, f.name) != f.default}


def resumed_config(saved: Mapping[str, Any], cfg: Any, given: Collection[str] | None, run: Path,
                   checkpoint: Path, epochs_done: int, rules: Mapping[str, str],
                   legacy: Mapping[str, Any] | None = None) -> Any:
    """The saved config with the changes ``rules`` allow (the trainer's table of FIXED, LOCAL, EXTEND);
    one line listing those it refuses. ``cfg`` is a config dataclass (TrainConfig, DetectConfig).
    ``legacy``: the value a field had before it existed, for runs saved without it (not today's default)."""
    config_class = type(cfg)
    saved = renamed_keys(saved, config_class)  # a run saved before a field was renamed
    foreign = sorted(set(saved) - {f.name for f in fields(config_class)})
    if foreign:
        raise ValueError(f"cannot resume from {checkpoint}: it was written by another trainer (its config has "
                         f"{', '.join(foreign[:3])}, unknown to {config_class.__name__})")
    values = {**(legacy or {}), **saved}
    refused = []
    for name in sorted(given_fields(cfg, given) - {"resume"}):
        new, old = getattr(cfg, name), values.get(name)
        rule = rules.get(name, FIXED)
        if name == "out":
            if new is not None and Path(new).resolve() != run.resolve():
                raise ValueError(f"--out {new} with --resume {run}: a resumed run continues in its own folder "
                                 f"({run}); leave out --out, or start a new run there")
        elif rule == FIXED:
            if new != old:
                refused.append(f"{flag(name)} {old} -> {new}")
        elif rule == EXTEND:
            if new < epochs_done:
                raise ValueError(f"{flag(name)} {new} with --resume {run}: the run has already completed "
                                 f"{epochs_done} epochs; give at least {epochs_done}")
            values[name] = new
        else:
            values[name] = new
    if refused:
        local = sorted(flag(k) for k, rule in rules.items() if rule == LOCAL and k not in ("resume", "out"))
        raise ValueError(f"cannot resume {run} with {'; '.join(refused)}: the run would not continue as it was "
                         f"started; a resume may change only {', '.join(local)} and extend --epochs. Start a new "
                         f"run to train differently (--pretrained {checkpoint} starts from its weights)")
    return config_class(**{**values, "resume": str(checkpoint), "out": str(run)})


# -- one writer per run folder ------------------------------------------------------------------

def _lock(out: Path) -> int | None:
    """Take the run folder's lock (``flock``: the OS releases it when the process ends, however it ends)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "a process that has not named itself yet"
        os.close(fd)
        raise ValueError(f"run folder {out} is being written by another backbonekit train ({holder}); wait "
                         f"for it to finish or stop it, or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def _refuse_foreign_files(out: Path) -> None:
    """A new run goes into a new or empty folder: never over a run (last.pt) or the user's own files."""
    if (out / "last.pt").exists():
        raise ValueError(f"run folder {out} already holds a run (last.pt): pass --resume {out} to continue it, "
                         f"or choose another --out")
    found = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(f"--out {out}: expected a new or empty folder for a new run, found {len(found)} "
                         f"file(s) that are not a backbonekit run ({shown}); choose another --out")


def _remove_failed_start(out: Path, created: bool) -> None:
    """Remove what a new run wrote before its first checkpoint, so the folder (name) is free again."""
    for name in FAILED_START_FILES + (LOCK_NAME,):
        (out / name).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
            out.rmdir()


@contextlib.contextmanager
def claim_run_folder(out: Path, *, new: bool) -> Iterator[Path]:
    """Hold ``out`` for this process while the block runs (the writing rank only).

    Refuses, in one line, a folder another process is writing (naming it), and for a new run a folder
    that is not empty. A new run that fails before its first ``last.pt`` leaves no trace: the folder is
    removed when this created it (otherwise emptied of what the run wrote).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a folder, found a file")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = _lock(out)
    except ValueError:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        if new:
            try:
                _refuse_foreign_files(out)
            except ValueError:
                (out / LOCK_NAME).unlink(missing_ok=True)
                raise
        try:
            yield out
        except BaseException:
            if new and not (out / "last.pt").exists():
                _remove_failed_start(out, created)
            raise
    finally:
        if fd is not None:
            os.close(fd)


def check_resumed_world(resumed: Mapping[str, Any] | None) -> None:
    """A resume runs with the process count it was trained with: shards, steps per epoch and the
    schedule's length all depend on it."""
    world = dist.world_size()
    if resumed is not None and int(resumed.get("world_size", 1)) != world:
        raise ValueError(f"cannot resume: the run was trained with {resumed.get('world_size', 1)} process(es), found "
                         f"{world}; resume with the same number (--nproc / torchrun --nproc_per_node)")


def run_in_folder(cfg: Any, resumed: Mapping[str, Any] | None,
                  train_fn: Callable[[Any, Path], Result]) -> Result:
    """``train_fn(cfg, out)`` with ``cfg.out`` resolved (:func:`default_out`), the writing rank holding the
    folder (:func:`claim_run_folder`) for the whole run; shared by ``train`` and ``detect train``."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg = replace(cfg, out=str(out))
    if not dist.is_main():
        return train_fn(cfg, out)
    with claim_run_folder(out, new=resumed is None):
        return train_fn(cfg, out)


def evaluation_folder(source: str | os.PathLike, label: str, split: str) -> Path:
    """Where ``evaluate`` writes its report by default: ``eval-LABEL-SPLIT`` inside a run folder given as
    such, else beside the checkpoint or ONNX file (``LABEL`` with characters unsafe in a name replaced);
    checked with :func:`evaluation_output` like a folder given with ``--out``."""
    source = Path(source)
    base = source if source.is_dir() else source.parent
    return base / f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}-{split}"


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run (a checkpoint written by ``train`` or ``detect train``)."""
    return (folder / "last.pt").is_file() or (folder / "best.pt").is_file()


def _earlier_evaluation(folder: Path) -> str | None:
    """None when ``folder`` holds an earlier evaluation report (its eval.json, as ``evaluate`` writes it)."""
    import json

    try:
        record = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("title"), str):
        return None
    from .._text import few

    found = sorted(p.name for p in folder.iterdir())
    return f"holds {len(found)} file(s) that are not an earlier evaluation report {few(found)}"


def evaluation_output(out: str | os.PathLike, *, force: bool = False) -> Path:
    """The folder an evaluation writes its report to, once that is known to lose nothing.

    Never a training run folder: its report.html shows the run's own evaluation, which training alone
    writes (another dataset's figures there would pass for the run's). Otherwise a new or empty folder, or
    one holding an earlier evaluation report (replaced); any other folder only with ``force``.
    """
    from ..checkpoint import check_output

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a folder for the evaluation report, found a file")
    if is_run_folder(out):
        raise ValueError(f"--out {out} is a training run folder: its report shows the run's own evaluation, which "
                         f"another evaluation would replace; expected another folder (the default is "
                         f"eval-DATASET-SPLIT inside it)")
    return check_output(out, force=force, replaceable=_earlier_evaluation)
