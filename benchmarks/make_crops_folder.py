"""Write an image folder (``OUT/{train,val}/CLASS/*.png``) of the digits cut from ``photodigits``, with
their photo background around them: a small real-pixel classification set for ``--dataset
imagefolder:OUT`` (used by ``bench_int8.py --classifier-run`` to check int8 on an image-folder run).

    PYTHONPATH=src python benchmarks/make_crops_folder.py /tmp/digitcrops
    backbonekit train --model resnet18 --dataset imagefolder:/tmp/digitcrops --image-size 32 --out runs/r18-crops
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from backbonekit.detection.data.photodigits import photodigits

MARGIN = 0.15  # of the box side, on each side: some photo around each digit


def write_crops(out: Path) -> dict[str, int]:
    counts = {}
    for split in ("train", "val"):
        data = photodigits(split)
        n = 0
        for index in range(len(data)):
            image, target = data[index]
            pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                x0, y0, x1, y1 = box
                pad_x, pad_y = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
                crop = pixels.crop((max(0, round(x0 - pad_x)), max(0, round(y0 - pad_y)),
                                    min(pixels.width, round(x1 + pad_x)), min(pixels.height, round(y1 + pad_y))))
                folder = out / split / data.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                crop.save(folder / f"{index:05d}_{n:06d}.png")
                n += 1
        counts[split] = n
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    counts = write_crops(parser.parse_args().out)
    print(", ".join(f"{split}: {n} crops" for split, n in counts.items()))


if __name__ == "__main__":
    main()
