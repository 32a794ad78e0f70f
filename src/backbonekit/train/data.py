"""Datasets and batches.

In-memory datasets (digits, CIFAR-10/100, fake) are held as one uint8 tensor (N, 3, H, W) on the
training device and augmented a whole batch at a time with tensor ops (random crop with zero padding,
horizontal flip, normalisation), as cifar10-airbench does: no per-image Python, no DataLoader. The
training split is zero-padded once (and mirrored once when flips are on: twice the padded split's
memory), so one indexing op gathers, crops and flips a batch.
ImageFolder data is decoded and resized by a DataLoader with workers and pinned memory; its uint8
batches then go through the same batched augmentation on the device.

Every random choice of an epoch comes from generators seeded with (seed, epoch), so an epoch can be
repeated exactly after a resume, and all ranks of a distributed run agree on the permutation.
"""

from __future__ import annotations

import os
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._text import few, first_line
from ..digits import DIGITS_SPLIT_SEED, digits_split
from ..pretrained import IMAGENET_MEAN, IMAGENET_STD  # ImageFolder data: no pass over the files to measure statistics
from .config import check_crop_padding

FOLDER_VAL_FRACTION = 0.2
PROBE_CHUNK = 256  # image headers read per task of the thread pool that checks a folder
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta"],
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"],
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


@dataclass
class Split:
    """One split in memory: uint8 images (N, 3, H, W) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def windows(self, padding: int, hflip: bool) -> Tensor:
        """The split's crop/flip windows (see ``crop_flip_windows``), built once and kept."""
        cache = self.__dict__.setdefault("_windows", {})
        if (padding, hflip) not in cache:
            cache.clear()
            cache[(padding, hflip)] = crop_flip_windows(self.images, padding, hflip)
        return cache[(padding, hflip)]


@dataclass
class DataBundle:
    """A dataset ready to train on: splits, class names and the preprocessing the model expects."""

    name: str
    classes: list[str]
    train: Split | Dataset
    val: Split | Dataset
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_padding: int
    hflip: bool

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, Split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self) -> dict:
        """What ``predict`` needs to prepare an image the way training did (stored in checkpoints)."""
        return {"dataset": self.name, "classes": list(self.classes), "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}


# -- loading ------------------------------------------------------------------------------------

def load_dataset(name: str, data_dir: str | os.PathLike = "data", image_size: int | None = None,
                 crop_padding: int | None = None, hflip: bool | None = None, download: bool = True, *,
                 skip_bad_images: bool = False, log: Callable[[str], None] | None = None) -> DataBundle:
    """Load ``digits``, ``cifar10``, ``cifar100``, ``fake[:N]`` or ``imagefolder:PATH``.

    ``None`` arguments take the dataset's defaults: CIFAR crop padding 4 with flips, digits a 2-pixel
    translation without flips (a flipped digit is another symbol), 32x32 for the in-memory sets.
    An image folder's files are checked when it is indexed: unreadable ones are refused (one line naming
    them), or left out with ``skip_bad_images`` (``log`` gets the count).
    """
    if name.startswith("imagefolder:"):
        size = image_size or 224
        padding = crop_padding if crop_padding is not None else size // 8
        check_crop_padding(padding, size)
        bundle = _image_folder(Path(name.split(":", 1)[1]), size, padding, True if hflip is None else hflip,
                               skip_bad_images, log)
        return _check_classes(bundle)
    if name == "digits":
        train, val, classes = _digits()
        defaults = (32, 2, False)
    elif name in CIFAR_FILES:
        train, val, classes = _cifar(name, Path(data_dir), download)
        defaults = (32, 4, True)
    elif name == "fake" or name.startswith("fake:"):
        train, val, classes = _fake(name)
        defaults = (32, 2, True)
    else:
        raise ValueError(f"unknown dataset {name!r}: expected digits, cifar10, cifar100, fake, fake:N "
                         f"or imagefolder:PATH")
    size = image_size or defaults[0]
    padding = defaults[1] if crop_padding is None else crop_padding
    check_crop_padding(padding, size)  # before the padded copy of the split is made
    train, val = _resize(train, size), _resize(val, size)
    mean, std = channel_stats(train.images)
    return _check_classes(DataBundle(name, classes, train, val, size, mean, std, padding,
                                     defaults[2] if hflip is None else hflip))


def _check_classes(data: DataBundle) -> DataBundle:
    """A classifier needs two classes at least: with one, every prediction is right and accuracy reads 100%."""
    if data.num_classes < 2:
        raise ValueError(f"dataset {data.name} has {data.num_classes} class {few(data.classes)}: classification "
                         f"needs at least 2 (an image folder needs one subfolder per class)")
    return data


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def _resize(split: Split, size: int) -> Split:
    if split.images.shape[-2:] == (size, size):
        return split
    x = F.interpolate(split.images.float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return Split(x.round().clamp(0, 255).to(torch.uint8), split.labels)


def _digits() -> tuple[Split, Split, list[str]]:
    """scikit-learn's 1,797 8x8 digits (values 0..16) as uint8 RGB, split 80/20, stratified, fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().mul(255 / 16).round().to(torch.uint8)
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = (torch.tensor(i) for i in digits_split(digits.target))
    return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]),
            [str(c) for c in digits.target_names])


def _fake(name: str) -> tuple[Split, Split, list[str]]:
    """Random images for smoke tests: ``fake`` (256 train / 64 val) or ``fake:N`` (N train, N//4 val)."""
    try:
        n_train = int(name.split(":", 1)[1]) if ":" in name else 256
    except ValueError:
        raise ValueError(f"expected fake:N with an integer N, found {name!r}") from None
    if n_train < 2:
        raise ValueError(f"fake:N needs N >= 2, found {n_train}")
    n_val, classes = max(n_train // 4, 1), [f"class{i}" for i in range(10)]
    g = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 256, (n_train + n_val, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n_train + n_val) % len(classes)
    return (Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:]), classes)


def _cifar(name: str, root: Path, download: bool) -> tuple[Split, Split, list[str]]:
    """CIFAR-10/100 through torchvision (which verifies the archive's checksums)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder, files, url = CIFAR_FILES[name]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        reason = first_line(exc, 160, lines=None)
        raise FileNotFoundError(
            f"{name} not found under --data-dir {root}: expected {root / folder}/{{{','.join(files)}}} "
            f"(extract {url} into {root}, or run with network access to download it); reason: {reason}"
        ) from None
    return _from_numpy_hwc(train), _from_numpy_hwc(test), list(train.classes)


def _from_numpy_hwc(ds) -> Split:
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.as_tensor(ds.targets, dtype=torch.long))


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.targets = [dataset.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


class BadImageError(ValueError):
    """An image file that cannot be decoded.

    Raised in DataLoader workers too: the DataLoader re-raises a worker's exception in the main process as
    ``type(exc)("Caught ... Original Traceback ...")``; this class keeps only the original message, so the
    user sees one line, not a worker traceback.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message:
            lines = [line for line in message.splitlines() if marker in line]
            message = lines[-1].split(marker, 1)[1] if lines else first_line(Exception(message))
        super().__init__(message)


def load_rgb(path: str):
    """A Pillow RGB image read by :func:`backbonekit.images.open_rgb` (EXIF orientation, every mode, the
    decompression-bomb limit), failing with a one-line BadImageError."""
    from ..images import open_rgb

    try:
        return open_rgb(path)
    except OSError as exc:
        raise BadImageError(f"{exc} (damaged past its header, or changed after the folder was checked)") from None


def probe_image(path: str) -> str | None:
    """Why PIL cannot read the file's header (format and size), or None when it can: cheap, no decoding."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
        return None if width > 0 and height > 0 else "empty image"
    except Exception as exc:  # a header PIL cannot identify, or a decompression bomb
        return f"{type(exc).__name__}: {first_line(exc, 80)}"


def find_bad_images(paths: Sequence[str], threads: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every file whose header PIL cannot read; headers are read by a thread pool."""
    chunks = [paths[i: i + PROBE_CHUNK] for i in range(0, len(paths), PROBE_CHUNK)]
    threads = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reasons = pool.map(lambda chunk: [probe_image(p) for p in chunk], chunks)
        found = [r for chunk in reasons for r in chunk]
    return [(p, r) for p, r in zip(paths, found) if r is not None]


def _checked_folder(root: Path, transform, skip_bad_images: bool, log: Callable[[str], None] | None):
    """torchvision's ImageFolder over ``root`` after checking every file's header (see ``load_dataset``)."""
    from torchvision import datasets

    folder = datasets.ImageFolder(str(root), transform=transform, loader=load_rgb)
    bad = find_bad_images([path for path, _ in folder.samples])
    if not bad:
        return folder
    names = [os.path.relpath(path, root) for path, _ in bad]
    if not skip_bad_images:
        raise ValueError(f"imagefolder: {len(bad)} of {len(folder.samples)} files under {root} are not readable "
                         f"images: {few(names)} ({bad[0][1]}); remove them or pass --skip-bad-data")
    dropped = {path for path, _ in bad}
    folder.samples = [(path, target) for path, target in folder.samples if path not in dropped]
    folder.imgs, folder.targets = folder.samples, [target for _, target in folder.samples]
    empty = [c for i, c in enumerate(folder.classes) if i not in set(folder.targets)]
    if empty:
        raise ValueError(f"imagefolder: no readable image left in class folder(s) {few(empty)} under {root} "
                         f"after skipping {len(bad)} unreadable file(s)")
    if log is not None:
        log(f"imagefolder: skipped {len(bad)} unreadable image file(s) under {root}: {few(names)}")
    return folder


def _image_folder(path: Path, size: int, crop_padding: int, hflip: bool, skip_bad_images: bool = False,
                  log: Callable[[str], None] | None = None) -> DataBundle:
    """PATH/train/CLASS/* and PATH/val/CLASS/*; without val/, a seeded stratified split of the images."""
    from sklearn.model_selection import train_test_split
    from torchvision import transforms

    if not path.is_dir():
        raise FileNotFoundError(f"imagefolder: expected a folder with CLASS/ subfolders at {path}, found none")
    # decode + resize per image in the workers; random augmentation happens batched on the device
    tf = transforms.Compose([transforms.Resize((size, size), antialias=True), transforms.PILToTensor()])
    train_root = path / "train" if (path / "train").is_dir() else path
    try:
        train = _checked_folder(train_root, tf, skip_bad_images, log)
        if (path / "val").is_dir():
            val = _checked_folder(path / "val", tf, skip_bad_images, log)
            if val.classes != train.classes:
                raise ValueError(f"imagefolder: class folders differ between {train_root} and {path / 'val'}")
        elif len(train.classes) >= 2:
            idx = list(range(len(train.targets)))
            train_idx, val_idx = train_test_split(idx, test_size=FOLDER_VAL_FRACTION, stratify=train.targets,
                                                  random_state=DIGITS_SPLIT_SEED)
            train, val = _Subset(train, train_idx), _Subset(train, val_idx)
        else:  # refused by _check_classes with its own message; no split to make
            val = train
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"imagefolder: {first_line(exc, None, lines=None)}") from None
    classes = train.dataset.classes if isinstance(train, _Subset) else train.classes
    return DataBundle(f"imagefolder:{path}", list(classes), train, val, size, IMAGENET_MEAN, IMAGENET_STD,
                      crop_padding, hflip)


# -- batches ------------------------------------------------------------------------------------

def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one (seed, epoch, stream): epochs repeat exactly after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2 ** 63))
    return g


def epoch_indices(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  equal_shards: bool = True) -> Tensor:
    """This rank's sample indices for one epoch.

    Every rank draws the same permutation and takes every ``world``-th index from ``rank``. With
    ``equal_shards`` (training) the tail is dropped so every rank runs the same number of steps;
    without it (evaluation) the shards cover the set exactly once.
    """
    order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0)) if shuffle else torch.arange(n)
    if equal_shards and world > 1:
        order = order[: n - n % world]
    return order[rank::world]


def crop_flip_windows(images: Tensor, padding: int, hflip: bool) -> Tensor:
    """Every crop of the zero-padded images (and of their mirror images when ``hflip``), as one view.

    Shape (flips, N, C, 2p+1, 2p+1, H, W), built with ``unfold`` (no copy beyond the padding): one
    indexing op then gathers, crops and flips a whole batch. Cropping the mirror image at offset dx is
    the mirror of the crop at 2p-dx, so with uniform offsets this is RandomCrop(padding) + RandomHorizontalFlip.
    """
    padded = F.pad(images, (padding,) * 4) if padding else images
    stack = torch.stack([padded, padded.flip(-1)]) if hflip else padded[None]
    h, w = images.shape[-2:]
    return stack.unfold(3, h, 1).unfold(4, w, 1)


def sample_windows(windows: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
    """One random crop (and flip) per index: uint8 (len(indices), C, H, W)."""
    flips, _, _, ny, nx = windows.shape[:5]
    n, device = len(indices), windows.device
    f = torch.randint(0, flips, (n,), generator=generator, device=device)
    dy = torch.randint(0, ny, (n,), generator=generator, device=device)
    dx = torch.randint(0, nx, (n,), generator=generator, device=device)
    return windows[f, indices, :, dy, dx]


def random_crop_flip(images: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """RandomCrop(size, padding) with zero fill, then RandomHorizontalFlip, for a whole uint8 batch."""
    windows = crop_flip_windows(images, padding, hflip)
    return sample_windows(windows, torch.arange(len(images), device=images.device), generator)


class Normalizer:
    """uint8 (N, 3, H, W) -> float normalised with the dataset's mean/std, optionally channels_last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False) -> None:
        self.scale = (1 / (255 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float() * self.scale - self.shift
        return x.contiguous(memory_format=self.memory_format)


@dataclass
class Batches:
    """Iterates one epoch of (normalised images, labels, dataset indices) for one rank."""

    data: Split | Dataset
    batch_size: int
    normalize: Normalizer
    device: torch.device
    seed: int
    epoch: int
    train: bool
    crop_padding: int = 0
    hflip: bool = False
    rank: int = 0
    world: int = 1
    workers: int = 0

    def indices(self) -> Tensor:
        return epoch_indices(len(self.data), shuffle=self.train, seed=self.seed, epoch=self.epoch,
                             rank=self.rank, world=self.world, equal_shards=self.train)

    def __len__(self) -> int:
        n = len(self.indices())
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > (1 if self.train else 0) else 0)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        aug = epoch_generator(self.seed, self.epoch, 1 + self.rank, self.device)
        order = self.indices()
        if isinstance(self.data, Split):
            yield from self._in_memory(order, aug)
            return
        loader = torch.utils.data.DataLoader(
            self.data, batch_size=self.batch_size, sampler=order.tolist(), num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for chunk, (images, labels) in zip(order.split(self.batch_size), loader):
            if self.train and len(labels) < 2:
                continue  # BatchNorm cannot train on a batch of one
            images = images.to(self.device, non_blocking=True)
            if self.train:
                images = random_crop_flip(images, self.crop_padding, self.hflip, aug)
            yield self.normalize(images), labels.to(self.device, non_blocking=True), chunk

    def _in_memory(self, order: Tensor, aug: torch.Generator) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        split = self.data
        windows = split.windows(self.crop_padding, self.hflip) if self.train else None
        for chunk in order.split(self.batch_size):
            if self.train and len(chunk) < 2:
                continue
            idx = chunk.to(split.images.device)
            images = sample_windows(windows, idx, aug) if self.train else split.images.index_select(0, idx)
            yield self.normalize(images), split.labels.index_select(0, idx), chunk
