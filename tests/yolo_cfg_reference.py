"""An independent, cfg-driven YOLOv3 for the tests: Darknet's ``cfg/yolov3.cfg`` as text, a parser, a
sequential builder (convolutional / shortcut / route / upsample / yolo), Darknet's ``.weights`` reader
and writer in the cfg's own layer order, and Darknet's ``[yolo]`` decoding written with Darknet's flat
``entry_index`` arithmetic (``src/yolo_layer.c``). Shares no code with ``backbonekit.detection``.

The cfg text is written here from the architecture facts (Darknet-53: a 32-channel 3x3 conv, then five
stages of a stride-2 3x3 conv and 1, 2, 8, 8, 4 residual blocks; YOLOv3's neck and head as in the paper).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ANCHORS = "10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326"


def _conv(filters: int, size: int, stride: int = 1, bn: bool = True, activation: str = "leaky") -> str:
    norm = "batch_normalize=1\n" if bn else ""
    return f"[convolutional]\n{norm}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={activation}\n\n"


def _residual(filters: int) -> str:
    return _conv(filters // 2, 1) + _conv(filters, 3) + "[shortcut]\nfrom=-3\nactivation=linear\n\n"


def _yolo(mask: str, classes: int) -> str:
    return (f"[yolo]\nmask = {mask}\nanchors = {ANCHORS}\nclasses={classes}\nnum=9\njitter=.3\n"
            f"ignore_thresh = .7\ntruth_thresh = 1\nrandom=1\n\n")


def yolov3_cfg(classes: int = 80, width: int = 416) -> str:
    """The text of Darknet's cfg/yolov3.cfg (training options trimmed) for ``classes`` classes."""
    filters = 3 * (classes + 5)
    text = f"[net]\nbatch=1\nwidth={width}\nheight={width}\nchannels=3\n\n" + _conv(32, 3)
    for depth, channels in zip((1, 2, 8, 8, 4), (64, 128, 256, 512, 1024)):
        text += _conv(channels, 3, 2) + _residual(channels) * depth
    # ######## head: layers 75.. ########
    text += (_conv(512, 1) + _conv(1024, 3)) * 2 + _conv(512, 1) + _conv(1024, 3)
    text += _conv(filters, 1, bn=False, activation="linear") + _yolo("6,7,8", classes)
    text += "[route]\nlayers = -4\n\n" + _conv(256, 1) + "[upsample]\nstride=2\n\n" + "[route]\nlayers = -1, 61\n\n"
    text += (_conv(256, 1) + _conv(512, 3)) * 2 + _conv(256, 1) + _conv(512, 3)
    text += _conv(filters, 1, bn=False, activation="linear") + _yolo("3,4,5", classes)
    text += "[route]\nlayers = -4\n\n" + _conv(128, 1) + "[upsample]\nstride=2\n\n" + "[route]\nlayers = -1, 36\n\n"
    text += (_conv(128, 1) + _conv(256, 3)) * 2 + _conv(128, 1) + _conv(256, 3)
    text += _conv(filters, 1, bn=False, activation="linear") + _yolo("0,1,2", classes)
    return text


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Darknet's ``read_cfg``: ``[section]`` headers then ``key=value`` lines; ``#`` comments."""
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("["):
            blocks.append({"type": line[1:-1]})
        else:
            key, value = line.split("=", 1)
            blocks[-1][key.strip()] = value.strip()
    return blocks


class CfgYOLOv3(nn.Module):
    """The network a yolov3.cfg text describes, layer by layer, as Darknet runs it."""

    def __init__(self, cfg: str) -> None:
        super().__init__()
        blocks = parse_cfg(cfg)
        self.net, self.blocks = blocks[0], blocks[1:]
        self.layers = nn.ModuleList()
        channels: list[int] = []
        c = int(self.net["channels"])
        for i, b in enumerate(self.blocks):
            layer: nn.Module = nn.Identity()
            if b["type"] == "convolutional":
                bn, size, n = int(b.get("batch_normalize", 0)), int(b["size"]), int(b["filters"])
                pad = size // 2 if int(b["pad"]) else 0
                parts = [nn.Conv2d(c, n, size, int(b["stride"]), pad, bias=not bn)]
                if bn:
                    parts.append(nn.BatchNorm2d(n))
                if b["activation"] == "leaky":
                    parts.append(nn.LeakyReLU(0.1))
                layer, c = nn.Sequential(*parts), n
            elif b["type"] == "route":
                c = sum(channels[self._index(i, int(s))] for s in b["layers"].split(","))
            self.layers.append(layer)
            channels.append(c)

    @staticmethod
    def _index(i: int, ref: int) -> int:
        return i + ref if ref < 0 else ref

    def conv_layers(self) -> list[nn.Sequential]:
        return [layer for layer, b in zip(self.layers, self.blocks) if b["type"] == "convolutional"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        detections = []
        for i, (layer, b) in enumerate(zip(self.layers, self.blocks)):
            kind = b["type"]
            if kind == "convolutional":
                x = layer(x)
            elif kind == "shortcut":
                x = outputs[-1] + outputs[self._index(i, int(b["from"]))]
            elif kind == "route":
                x = torch.cat([outputs[self._index(i, int(s))] for s in b["layers"].split(",")], 1)
            elif kind == "upsample":
                x = F.interpolate(x, scale_factor=int(b["stride"]), mode="nearest")
            elif kind == "yolo":
                detections.append(self._yolo_boxes(x, b))
            outputs.append(x)
        return torch.cat(detections, 1)

    def _yolo_boxes(self, out: torch.Tensor, b: dict[str, str]) -> torch.Tensor:
        """Darknet's forward_yolo_layer + get_yolo_box on the flat output, row = n*w*h + i."""
        anchors = [float(v) for v in b["anchors"].split(",")]
        mask = [int(v) for v in b["mask"].split(",")]
        classes = int(b["classes"])
        batch, _, h, w = out.shape
        net_w, net_h = int(self.net["width"]), int(self.net["height"])
        flat = out.reshape(batch, -1)
        i = torch.arange(h * w)
        rows = []
        for n, a in enumerate(mask):
            def entry(k: int) -> torch.Tensor:  # entry_index(l, b, n*w*h + i, k)
                return flat[:, n * w * h * (4 + classes + 1) + k * w * h + i]
            col, row = (i % w).float(), (i // w).float()
            x = (col + torch.sigmoid(entry(0))) / w * net_w
            y = (row + torch.sigmoid(entry(1))) / h * net_h
            bw = torch.exp(entry(2)) * anchors[2 * a]
            bh = torch.exp(entry(3)) * anchors[2 * a + 1]
            obj = torch.sigmoid(entry(4))
            cls = torch.stack([torch.sigmoid(entry(5 + k)) for k in range(classes)], -1)
            rows.append(torch.cat((torch.stack((x, y, bw, bh, obj), -1), cls), -1))
        return torch.cat(rows, 1)

    # -- Darknet weights, in this cfg's layer order ----------------------------------------------
    def load_weights(self, path: str) -> None:
        with open(path, "rb") as f:
            major, minor, _ = struct.unpack("<3i", f.read(12))
            f.read(8 if major * 10 + minor >= 2 else 4)
            data = np.fromfile(f, dtype="<f4")
        offset = 0

        def take(t: torch.Tensor) -> None:
            nonlocal offset
            t.data.copy_(torch.from_numpy(data[offset:offset + t.numel()].copy()).view_as(t))
            offset += t.numel()

        for seq in self.conv_layers():
            conv = seq[0]
            if len(seq) > 1 and isinstance(seq[1], nn.BatchNorm2d):
                bn = seq[1]
                for t in (bn.bias, bn.weight, bn.running_mean, bn.running_var):
                    take(t)
            else:
                take(conv.bias)
            take(conv.weight)
        if offset != data.size:
            raise ValueError(f"{data.size - offset} floats left over")

    def save_weights(self, path: str, minor: int = 2, seen: int = 0) -> None:
        header = struct.pack("<3i", 0, minor, 0) + (struct.pack("<q", seen) if minor >= 2 else struct.pack("<i", seen))
        parts = []
        for seq in self.conv_layers():
            conv = seq[0]
            if len(seq) > 1 and isinstance(seq[1], nn.BatchNorm2d):
                bn = seq[1]
                parts += [bn.bias, bn.weight, bn.running_mean, bn.running_var]
            else:
                parts.append(conv.bias)
            parts.append(conv.weight)
        with open(path, "wb") as f:
            f.write(header)
            for t in parts:
                f.write(t.detach().numpy().astype("<f4").tobytes())
