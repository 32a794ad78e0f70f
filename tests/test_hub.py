"""Published weights by name (``backbonekit.pretrained``) and their download (``backbonekit.hub``), offline.

A fixture serves files the tests write, in the real formats (a torchvision resnet18 state_dict, a Darknet
``.weights`` file packed with ``struct``, a YOLOv3 checkpoint), from an ``http.server`` on 127.0.0.1, and
registry entries are pointed at it. ``TORCH_HOME`` is a temporary folder: nothing touches the real cache or
the internet. The registry's facts are checked against independent sources: torchvision's and timm's own
metadata, Darknet's file format, Darknet's class list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import backbonekit as bk
from backbonekit import pretrained
from backbonekit.checkpoint import CheckpointError
from backbonekit.cli import main
from backbonekit.hub import FileSpec, cache_dir, fetch
from helpers import randomized, with_random_bn_statistics

SRC = Path(__file__).resolve().parents[1] / "src"
COCO_DOG = (16, 18)  # YOLOv3's label and COCO's category_id of "dog" (instances_val2017.json: {"id": 18, "name": "dog"})


class Server:
    """Files by name, the requests seen, and files whose answer stops halfway until released."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.stalls: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stall(self, name: str) -> tuple[threading.Event, threading.Event]:
        """The next answer for ``name`` sends half the file, sets the first event, waits for the second."""
        self.stalls[name] = (threading.Event(), threading.Event())
        return self.stalls[name]


@pytest.fixture
def server():
    served = Server()
    releases = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.lstrip("/")
            served.requests.append(name)
            body = served.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            stall = served.stalls.pop(name, None)
            if stall is None:
                self.wfile.write(body)
                return
            half_sent, release = stall
            releases.append(release)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            half_sent.set()
            release.wait(120)
            try:
                self.wfile.write(body[len(body) // 2:])
            except OSError:  # the client is gone
                pass

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    for release in releases:
        release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """A cache of the test's own, and no proxy between the client and 127.0.0.1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def darknet_bytes(num_floats: int = 1000, seen: int = 123) -> bytes:
    """A small file in Darknet's ``.weights`` format: version 0.2.0, ``seen`` as int64, float32 values."""
    return struct.pack("<iiiq", 0, 2, 0, seen) + struct.pack(f"<{num_floats}f", *range(num_floats))


def resnet18_bytes() -> tuple[bytes, dict]:
    state = randomized(torchvision.models.resnet18()).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def point_at(monkeypatch, server: Server, tag: str, data: bytes, file_name: str, **changes) -> pretrained.PublishedWeights:
    """Registry entry ``tag`` with its file served locally (full SHA-256 and exact size), ``changes`` applied."""
    server.files[file_name] = data
    spec = FileSpec((server.url(file_name),), file_name, sha256=sha256(data), size=len(data))
    entry = dataclasses.replace(pretrained.get(tag), file=spec, **changes)
    monkeypatch.setitem(pretrained._PUBLISHED, tag, entry)
    return entry


def closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# -- the download ------------------------------------------------------------------------------------------
def test_pretrained_true_downloads_once_and_gives_torchvision_logits(server, monkeypatch, torch_home):
    data, state = resnet18_bytes()
    point_at(monkeypatch, server, "resnet18.tv_in1k", data, "resnet18-0123abcd.pth")
    model = bk.create_model("resnet18", pretrained=True).eval()
    reference = torchvision.models.resnet18()
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x))
    cached = torch_home / "hub" / "checkpoints" / "resnet18-0123abcd.pth"
    assert cached.read_bytes() == data and server.requests == ["resnet18-0123abcd.pth"]
    # the cache answers every later call: by full tag, by the tag alone, and where commands take --weights
    assert bk.create_model("resnet18", pretrained="resnet18.tv_in1k") is not None
    assert bk.create_model("resnet18", pretrained="tv_in1k", num_classes=0) is not None
    from backbonekit.export import build_for_export

    exported = build_for_export("resnet18", weights="resnet18.tv_in1k")
    assert torch.equal(exported.state_dict()["fc.weight"], state["fc.weight"])
    assert len(server.requests) == 1
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert model.class_names == names and len(names) == 1000  # ImageNet's names come with the weights


def test_a_url_is_fetched_and_checked_by_the_hash_its_name_carries(server):
    data = darknet_bytes()
    good, bad = f"tiny-{sha256(data)[:8]}.weights", "tiny-00000000.weights"
    server.files[good] = server.files[bad] = data
    path = bk.pretrained.weights_file(server.url(good))
    assert path == cache_dir() / good and path.read_bytes() == data
    with pytest.raises(CheckpointError, match="failed its check .*expected SHA-256 00000000") as info:
        bk.pretrained.weights_file(server.url(bad))
    assert "\n" not in str(info.value) and visible_files(cache_dir()) == [good]


def test_a_file_failing_its_hash_is_refused_and_removed(server, monkeypatch):
    data = darknet_bytes()
    entry = point_at(monkeypatch, server, "darknet53.darknet_conv74", data, "darknet53.conv.74")
    server.files["darknet53.conv.74"] = darknet_bytes(seen=999)  # what the server sends is not the published file
    with pytest.raises(CheckpointError, match="darknet53.darknet_conv74 downloaded from .* failed its check "
                                              "\\(expected SHA-256 [0-9a-f]{64}, found") as info:
        pretrained.fetch_weights(entry)
    assert "\n" not in str(info.value) and visible_files(cache_dir()) == []
    # a damaged file already in the cache (or put there by hand) is refused and removed too, never loaded
    target = cache_dir() / "darknet53.conv.74"
    target.write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="in the cache failed its check .*removed it, nothing was loaded"):
        pretrained.fetch_weights(entry)
    assert not target.exists()
    target.write_bytes(data[:100])  # the exact size is checked first
    with pytest.raises(CheckpointError, match=f"expected {len(data):,} bytes, found 100"):
        pretrained.fetch_weights(entry)
    # the right file put there by hand is used as it is, without asking the server
    requests = len(server.requests)
    target.write_bytes(data)
    assert pretrained.fetch_weights(entry) == target and len(server.requests) == requests


def test_a_read_only_cache_serves_its_files_and_refuses_a_bad_one(server, monkeypatch):
    """A shared cache the user cannot write to (torchvision reads its files from one): no lock is needed to
    use a good file, and a bad one is refused in one line saying it could not be removed."""
    from backbonekit import hub

    data = darknet_bytes()
    entry = point_at(monkeypatch, server, "darknet53.darknet_conv74", data, "darknet53.conv.74")
    target = cache_dir() / "darknet53.conv.74"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    target.parent.chmod(0o555)
    try:
        with monkeypatch.context() as read_only:
            if os.access(target.parent, os.W_OK):  # root writes anyway: refuse what a read-only folder refuses

                def denied(*args, **kwargs):
                    raise PermissionError(13, "Permission denied", str(target.parent))

                read_only.setattr(hub, "_download_lock", denied)
                read_only.setattr(Path, "unlink", denied)
            assert pretrained.fetch_weights(entry) == target and server.requests == []
            with open(target, "r+b") as f:  # damaged in place (the folder's mode does not protect the file)
                f.seek(len(data) - 4)
                f.write(b"\0\0\0\0")
            with pytest.raises(CheckpointError, match="in the cache failed its check .*could not remove it "
                                                      "\\(.*Permission denied.*delete it by hand, nothing was "
                                                      "loaded") as info:
                pretrained.fetch_weights(entry)
            assert "\n" not in str(info.value) and server.requests == []
    finally:
        target.parent.chmod(0o755)


def test_a_killed_download_leaves_nothing_usable(server, torch_home):
    data = darknet_bytes(200_000)
    server.files["big.weights"] = data
    half_sent, release = server.stall("big.weights")
    child = subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, server.url("big.weights"), "big.weights",
                              sha256(data)], env=child_env(torch_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert half_sent.wait(120), "the download never started"
        os.kill(child.pid, signal.SIGKILL)  # killed mid-download: no chance to clean up
        child.wait(60)
    finally:
        release.set()
    assert child.returncode == -signal.SIGKILL
    assert visible_files(cache_dir()) == []  # only hidden temporary files may be left, never the file's name
    assert fetch(FileSpec((server.url("big.weights"),), "big.weights", sha256=sha256(data))).read_bytes() == data
    assert server.requests == ["big.weights", "big.weights"]


FETCH_SCRIPT = ("import sys\nfrom backbonekit.hub import FileSpec, fetch\n"
                "print(fetch(FileSpec((sys.argv[1],), sys.argv[2], sha256=sys.argv[3]), progress=False))")


def child_env(torch_home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "TORCH_HOME": str(torch_home)}


def test_a_second_process_waits_for_the_first_instead_of_downloading_again(server, torch_home):
    data = darknet_bytes(200_000)
    server.files["shared.weights"] = data
    half_sent, release = server.stall("shared.weights")
    args = [sys.executable, "-c", FETCH_SCRIPT, server.url("shared.weights"), "shared.weights", sha256(data)]
    first = subprocess.Popen(args, env=child_env(torch_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert half_sent.wait(120), "the first download never started"
        second = subprocess.Popen(args, env=child_env(torch_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        waiting = second.stderr.readline()  # the second process says it waits (and does) while the first holds the file
        assert "waiting for another process to download shared.weights" in waiting
    finally:
        release.set()
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    target = cache_dir() / "shared.weights"
    assert [Path(out.strip()) for out, _ in outputs] == [target, target]
    assert target.read_bytes() == data and server.requests == ["shared.weights"]


def test_offline_is_one_line_naming_the_url_and_the_path_to_put_the_file_at(monkeypatch, tmp_path, capsys):
    url = closed_port_url("yolov3.weights")
    entry = dataclasses.replace(pretrained.get("yolov3.darknet_coco"),
                                file=dataclasses.replace(pretrained.get("yolov3.darknet_coco").file, urls=(url,)))
    monkeypatch.setitem(pretrained._PUBLISHED, "yolov3.darknet_coco", entry)
    target = cache_dir() / "yolov3.weights"
    with pytest.raises(OSError, match=f"cannot download yolov3.darknet_coco .*fetch {url} by hand and put it at "
                                      f"{target}$") as info:
        bk.create_model("yolov3", pretrained=True)
    assert "\n" not in str(info.value)
    picture = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    capsys.readouterr()
    assert main(["detect", "predict", "yolov3", str(picture), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(f"put it at {target}") and url in errors[0]
    assert visible_files(cache_dir()) == []


# -- predictions with names ----------------------------------------------------------------------------------
def dog_detector_bytes(tmp_path: Path) -> bytes:
    """A small 80-class YOLOv3 checkpoint whose every cell sees a dog (objectness and class "dog" biased up)."""
    from backbonekit.detection.weights import save_detector

    model = bk.create_model("yolov3", backbone="resnet18", neck_channels=(32, 16, 8), input_size=64)
    with torch.no_grad():
        for conv in model.head.convs_pred:
            conv.weight.zero_()
            bias = conv.bias.view(3, 85)
            bias.fill_(-10.0)
            bias[:, :4] = 0.0
            bias[:, 4] = 10.0
            bias[:, 5 + COCO_DOG[0]] = 10.0
    path = tmp_path / "dog.pt"
    save_detector(model, path)
    return path.read_bytes()


def test_detect_predict_fetches_the_coco_weights_and_labels_dog_with_coco_ids(server, monkeypatch, tmp_path):
    data = dog_detector_bytes(tmp_path)
    point_at(monkeypatch, server, "yolov3.darknet_coco", data, "yolov3.weights", model_kwargs={})
    picture = tmp_path / "holiday.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(picture)
    assert main(["detect", "predict", "yolov3", str(picture), "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert rows and {r["category_id"] for r in rows} == {COCO_DOG[1]}
    assert (tmp_path / "out" / "holiday.png").is_file() and server.requests == ["yolov3.weights"]
    from backbonekit.detection.loading import load_detector

    model, _ = load_detector("yolov3.darknet_coco")  # a published tag names a detector too; from the cache
    assert model.class_names[COCO_DOG[0]] == "dog" and model.category_ids[COCO_DOG[0]] == COCO_DOG[1]
    assert len(model.class_names) == len(model.category_ids) == 80 and server.requests == ["yolov3.weights"]


def test_models_without_published_weights_say_so_in_one_line():
    with pytest.raises(ValueError, match="detnet59 has no published weights: the DetNet authors") as info:
        bk.create_model("detnet59", pretrained=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("call, message", [
    (lambda: bk.create_model("resnet50", pretrained="resnet18.tv_in1k"), "resnet18.tv_in1k holds weights for resnet18"),
    (lambda: bk.create_model("fasterrcnn", backbone="resnet18", pretrained=True),
     "fasterrcnn.tv_coco holds fasterrcnn on resnet50, found backbone='resnet18'"),
    (lambda: bk.create_model("resnet50", pretrained="tv3_in1k"),
     "not found: .*'tv3_in1k'.*resnet50's published weights: resnet50.tv_in1k, resnet50.tv2_in1k"),
])
def test_a_tag_that_cannot_apply_is_refused_before_any_download(server, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value) and server.requests == []


# -- the listing and the registry's facts -------------------------------------------------------------------
def test_weights_lists_tags_with_size_licence_and_published_accuracy(capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for entry in pretrained.list_published():
        assert entry.name in out
    line = next(row for row in out.splitlines() if row.startswith("resnet50.tv2_in1k *"))
    assert "97.8 MiB" in line and "BSD-3-Clause" in line and "top-1 80.858, top-5 95.434" in line
    line = next(row for row in out.splitlines() if row.startswith("darknet53.darknet_in1k"))
    assert "158.9 MiB" in line and "public domain" in line and "top-1 77.2" in line  # 166,582,580 bytes
    assert "detnet59" in out and "no published weights" in out
    assert main(["weights", "yolov3*", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tag"] for r in rows] == ["yolov3.darknet_coco"]
    assert rows[0]["size_bytes"] == 248_007_048 and rows[0]["sha1"] == "520878f12e97cf820529daea502acca380f1cb8e"
    assert rows[0]["cache_path"] == str(cache_dir() / "yolov3.weights") and rows[0]["cached"] is False


ENTRIES = pretrained.list_published()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_registry_entry_is_well_formed(entry):
    spec = entry.file
    assert spec.urls and all(url.startswith("https://") for url in spec.urls)
    assert all(url.rsplit("/", 1)[1] == spec.file_name for url in spec.urls)
    hex_digits = set("0123456789abcdef")
    assert spec.sha256 or spec.sha1 or spec.size, "nothing to check the file against"
    if spec.sha256:
        assert set(spec.sha256) <= hex_digits and 8 <= len(spec.sha256) <= 64
    if spec.sha1:
        assert set(spec.sha1) <= hex_digits and len(spec.sha1) == 40
    assert entry.license and entry.source and entry.input_size > 0
    assert [e.default for e in ENTRIES if e.model == entry.model].count(True) == 1
    info = bk.model_info(entry.model)
    if entry.classes:
        classes = pretrained.class_set(entry.classes)
        assert len(classes.names) == entry.num_classes
        assert classes.category_ids is None or len(classes.category_ids) == entry.num_classes
    with torch.device("meta"):  # the model these weights build has as many classes as names
        if info.task == "detection":
            model = bk.create_model(entry.model, num_classes=entry.num_classes or None, **entry.model_kwargs)
            assert model.num_classes == entry.num_classes
        elif entry.num_classes:
            model = bk.create_model(entry.model, num_classes=entry.num_classes)
            assert (model.fc if hasattr(model, "fc") else model.head.fc).out_features == entry.num_classes


def test_every_registered_model_has_weights_or_says_why_not():
    with_weights = {e.model for e in ENTRIES}
    without = set(pretrained.models_without_weights())
    assert with_weights | without == set(bk.list_models(task=None)) and not with_weights & without
    assert without == {"detnet59"}


TORCHVISION_ENUMS = [torchvision.models.ResNet18_Weights, torchvision.models.ResNet34_Weights,
                     torchvision.models.ResNet50_Weights, torchvision.models.ResNet101_Weights,
                     torchvision.models.ResNet152_Weights,
                     torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights,
                     torchvision.models.detection.RetinaNet_ResNet50_FPN_Weights,
                     torchvision.models.detection.FCOS_ResNet50_FPN_Weights]


def test_torchvision_entries_are_torchvision_s_own_metadata():
    by_url = {w.url: w for enum in TORCHVISION_ENUMS for w in enum}
    entries = [e for e in ENTRIES if e.layout == "torchvision"]
    assert len(entries) == 11
    for entry in entries:
        weights = by_url[entry.file.urls[0]]
        assert entry.file.sha256 == weights.url.rsplit("-", 1)[1].split(".")[0] and len(entry.file.sha256) == 8
        (published,) = weights.meta["_metrics"].values()
        expected = {"top-1": published.get("acc@1"), "top-5": published.get("acc@5"), "box AP": published.get("box_map")}
        assert dict(entry.metrics) == {k: v for k, v in expected.items() if v is not None}
        assert entry.size_mib == weights.meta["_file_size"]
        assert (weights == type(weights).DEFAULT) == entry.default
        categories = weights.meta["categories"]
        offset = 1 if entry.model == "fasterrcnn" else 0  # Faster R-CNN's background slot is internal here
        assert pretrained.class_set(entry.classes).names == tuple(categories[offset:])


def test_timm_darknet53_entry_is_timm_s_pretrained_cfg():
    timm = pytest.importorskip("timm")
    cfg = timm.models.get_pretrained_cfg("darknet53.c2ns_in1k")
    entry = pretrained.get("darknet53.c2ns_in1k")
    assert entry.file.urls == (cfg.url,) and entry.file.sha256 == "3aeff817" and entry.default
    assert entry.license.lower() == cfg.license and entry.input_size == cfg.input_size[-1]
    assert entry.preprocessing["crop_pct"] == cfg.crop_pct and entry.preprocessing["interpolation"] == cfg.interpolation
    assert tuple(entry.preprocessing["mean"]) == cfg.mean and tuple(entry.preprocessing["std"]) == cfg.std


def test_darknet_sizes_are_what_the_format_gives():
    from backbonekit.darknet_weights import darknet_layers
    from backbonekit.darknet_yolov3 import classes_from_float_count

    header = 20  # major, minor, revision as int32, seen as int64 (Darknet >= 0.2)
    floats = {n: sum(layer.num_floats for layer in darknet_layers(num_classes=n)) for n in (0, 1000)}
    assert pretrained.get("darknet53.darknet_in1k").file.size == header + 4 * floats[1000] == 166_582_580
    assert pretrained.get("darknet53.darknet_conv74").file.size == header + 4 * floats[0] == 162_482_580
    size = pretrained.get("yolov3.darknet_coco").file.size
    assert size == 248_007_048 and classes_from_float_count((size - header) // 4) == 80


def test_darknet_imagenet_names_follow_darknet_s_label_order():
    names = pretrained.class_set("imagenet-darknet").names
    # the first lines of Darknet's data/imagenet.shortnames.list
    assert names[:4] == ("kit fox", "English setter", "Siberian husky", "Australian terrier")
    assert sorted(names) == sorted(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    timm = pytest.importorskip("timm")
    synsets = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    order = pretrained.darknet_imagenet_order()
    assert sorted(order) == synsets.read_text().split()  # the same 1000 classes; ImageNet's index is the sorted one


def test_voc_and_coco_class_sets():
    voc = pretrained.class_set("voc")
    assert len(voc.names) == 20 and voc.names[0] == "aeroplane" and voc.names[-1] == "tvmonitor"
    coco = pretrained.class_set("coco80")
    assert len(coco.names) == 80 and coco.names[COCO_DOG[0]] == "dog" and coco.category_ids[COCO_DOG[0]] == COCO_DOG[1]
    assert coco.category_ids[-1] == 90 and len(set(coco.category_ids)) == 80


def test_torchvision_coco_detector_tag_computes_as_torchvision_and_names_coco_ids(server, monkeypatch):
    """fasterrcnn.tv_coco, as torchvision builds it for its COCO weights (FrozenBatchNorm2d with eps 0): the same
    detections, and labels that map to torchvision's (COCO's category ids) through ``category_ids``."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    options = dict(min_size=96, max_size=96, box_score_thresh=0.0, rpn_pre_nms_top_n_test=100,
                   rpn_post_nms_top_n_test=50)
    reference = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3), 91,
                           **options)
    with_random_bn_statistics(reference)
    for module in reference.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    overwrite_eps(reference, 0.0)  # what torchvision's builder does with its COCO_V1 weights
    point_at(monkeypatch, server, "fasterrcnn.tv_coco", buffer.getvalue(), "fasterrcnn_resnet50_fpn_coco-0123abcd.pth")
    model = bk.create_model("fasterrcnn", pretrained=True, **options).eval()
    assert {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    images = [torch.rand(3, 80, 96), torch.rand(3, 96, 70)]
    with torch.no_grad():
        found, expected = model(images), reference.eval()(images)
    categories = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    for f, e in zip(found, expected):
        assert e["boxes"].shape[0] > 0 and torch.allclose(f["boxes"], e["boxes"], atol=1e-4)
        assert torch.allclose(f["scores"], e["scores"])
        assert [model.category_ids[i] for i in f["labels"].tolist()] == e["labels"].tolist()
        assert [model.class_names[i] for i in f["labels"].tolist()] == [categories[i] for i in e["labels"].tolist()]
