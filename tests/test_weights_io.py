"""Weights interop: Darknet .weights files, safetensors, and conversion between formats.

Independent references: a Darknet file packed by hand with ``struct`` (byte order, header versions,
array order), the file sizes computed in REFERENCES.md section 4, timm's darknet53 and torchvision's
resnet18 (outputs after conversion).
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import backbonekit
from backbonekit import cli
from backbonekit.checkpoint import CheckpointError
from backbonekit.darknet_weights import (DarknetHeader, inspect_darknet_file, read_darknet_weights,
                                         write_darknet_weights)
from backbonekit.models.darknet import Darknet, DarknetConfig
from backbonekit.weights import convert_weights, output_format_for, read_weights, write_safetensors
from helpers import assert_same_network_output, randomized

# REFERENCES.md section 4: darknet53.weights and darknet53.conv.74 with a 20-byte header
CLASSIFIER_FILE_BYTES = 166_582_580
BACKBONE_FILE_BYTES = 162_482_580

# A tiny Darknet: stem 3->2 (3x3), one stage: conv_down 2->4 (3x3), one block 4->2 (1x1), 2->4 (3x3); 3 classes.
TINY = DarknetConfig(stem_channels=2, depths=(1,), channels=(4,))
TINY_CLASSES = 3
# floats per layer, counted by hand: BN layers 4*out + out*in*k*k; the classifier out + out*in
TINY_LAYER_FLOATS = [4 * 2 + 2 * 3 * 9, 4 * 4 + 4 * 2 * 9, 4 * 2 + 2 * 4 * 1, 4 * 4 + 4 * 2 * 9, 3 + 3 * 4]
TINY_FLOATS = sum(TINY_LAYER_FLOATS)  # 269
TINY_BACKBONE_FLOATS = TINY_FLOATS - TINY_LAYER_FLOATS[-1]  # 254

HEADERS = {  # version -> (struct format, seen); 0.2 stores seen as int64 (20 bytes), 0.1 as int32 (16 bytes)
    "0.2": ("<3iq", 2**40 + 7),
    "0.1": ("<3ii", 12345),
}


def pack_tiny_file(path: Path, version: str = "0.2", num_floats: int = TINY_FLOATS, extra_bytes: bytes = b"") -> Path:
    """A Darknet file whose i-th float is i, packed with struct (independent of the writer)."""
    fmt, seen = HEADERS[version]
    major, minor = map(int, version.split("."))
    data = struct.pack(fmt, major, minor, 0, seen) + struct.pack(f"<{num_floats}f", *range(num_floats)) + extra_bytes
    path.write_bytes(data)
    return path


def arange(start: int, *shape: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return torch.arange(start, start + n, dtype=torch.float32).reshape(shape)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN parameters and statistics, so that a swapped array changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def first_line_error(exc_info: pytest.ExceptionInfo) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- the hand-built file ----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.2", "0.1"])
def test_hand_built_file_lands_in_the_right_tensors(tmp_path: Path, version: str) -> None:
    path = pack_tiny_file(tmp_path / "tiny.weights", version)
    assert path.stat().st_size == (20 if version == "0.2" else 16) + 4 * TINY_FLOATS
    state, info = read_darknet_weights(path, TINY, TINY_CLASSES)
    assert (info.header.major, info.header.minor) == tuple(map(int, version.split(".")))
    assert info.header.seen == HEADERS[version][1]
    assert info.has_classifier and info.num_floats == TINY_FLOATS
    # layer 0: biases, scales, rolling mean, rolling variance, then weights (out, in, kh, kw)
    assert torch.equal(state["stem.bn.bias"], torch.tensor([0.0, 1.0]))
    assert torch.equal(state["stem.bn.weight"], torch.tensor([2.0, 3.0]))
    assert torch.equal(state["stem.bn.running_mean"], torch.tensor([4.0, 5.0]))
    assert torch.equal(state["stem.bn.running_var"], torch.tensor([6.0, 7.0]))
    assert torch.equal(state["stem.conv.weight"], arange(8, 2, 3, 3, 3))
    # layer 1 (stride-2 conv) starts at float 62
    assert torch.equal(state["stages.0.conv_down.bn.bias"], arange(62, 4))
    assert torch.equal(state["stages.0.conv_down.bn.running_var"], arange(74, 4))
    assert torch.equal(state["stages.0.conv_down.conv.weight"], arange(78, 4, 2, 3, 3))
    # layers 2 and 3: the residual block's 1x1 and 3x3 convs
    assert torch.equal(state["stages.0.blocks.0.conv1.bn.bias"], arange(150, 2))
    assert torch.equal(state["stages.0.blocks.0.conv1.conv.weight"], arange(158, 2, 4, 1, 1))
    assert torch.equal(state["stages.0.blocks.0.conv2.bn.weight"], arange(170, 4))
    assert torch.equal(state["stages.0.blocks.0.conv2.conv.weight"], arange(182, 4, 2, 3, 3))
    # the classifier conv: biases, then weights (3, 4, 1, 1) -> Linear (3, 4)
    assert torch.equal(state["head.fc.bias"], arange(254, 3))
    assert torch.equal(state["head.fc.weight"], arange(257, 3, 4))
    model = Darknet(TINY, num_classes=TINY_CLASSES)
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("version", ["0.2", "0.1"])
def test_writer_reproduces_the_hand_built_bytes(tmp_path: Path, version: str) -> None:
    source = pack_tiny_file(tmp_path / "hand.weights", version)
    state, info = read_darknet_weights(source, TINY, TINY_CLASSES)
    out = tmp_path / "written.weights"
    write_darknet_weights(state, out, header=info.header, config=TINY, num_classes=TINY_CLASSES)
    assert out.read_bytes() == source.read_bytes()


def test_writer_refuses_non_darknet_classifier(tmp_path: Path) -> None:
    model = Darknet(TINY, num_classes=TINY_CLASSES)
    with pytest.raises(CheckpointError, match="expected a 1000-way head.fc .* found 3"):
        write_darknet_weights(model.state_dict(), tmp_path / "x.weights", config=TINY)
    assert not (tmp_path / "x.weights").exists()


def test_tiny_backbone_file_told_apart_by_size(tmp_path: Path) -> None:
    path = pack_tiny_file(tmp_path / "tiny.conv.3", num_floats=TINY_BACKBONE_FLOATS)
    state, info = read_darknet_weights(path, TINY, TINY_CLASSES)
    assert not info.has_classifier
    assert not any(k.startswith("head.") for k in state)
    assert torch.equal(state["stages.0.blocks.0.conv2.conv.weight"], arange(182, 4, 2, 3, 3))


@pytest.mark.parametrize("num_floats, extra, found", [
    (TINY_FLOATS - 1, b"", f"found {TINY_FLOATS - 1}"),  # truncated inside the classifier
    (100, b"", "found 100; reading stopped in layer 1 (stages.0.conv_down"),  # truncated inside layer 1
    (TINY_FLOATS + 5, b"", "5 floats left over after the last layer"),  # too long
    (TINY_FLOATS, b"\x00\x00", "2 stray bytes"),  # not a whole number of floats
])
def test_truncated_and_oversized_files_are_refused(tmp_path: Path, num_floats: int, extra: bytes, found: str) -> None:
    path = pack_tiny_file(tmp_path / "bad.weights", num_floats=num_floats, extra_bytes=extra)
    with pytest.raises(CheckpointError) as exc_info:
        read_darknet_weights(path, TINY, TINY_CLASSES)
    message = first_line_error(exc_info)
    assert f"expected {TINY_BACKBONE_FLOATS} float32 values" in message and f"or {TINY_FLOATS}" in message
    assert found in message


@pytest.mark.parametrize("major, minor", [(0, 3), (1, 0), (1001, 2)])
def test_unknown_header_version_is_refused(tmp_path: Path, major: int, minor: int) -> None:
    path = tmp_path / "odd.weights"
    path.write_bytes(struct.pack("<3iq", major, minor, 0, 0) + struct.pack(f"<{TINY_FLOATS}f", *range(TINY_FLOATS)))
    with pytest.raises(CheckpointError, match=f"version {major}.{minor}.0 is unknown"):
        read_darknet_weights(path, TINY, TINY_CLASSES)


@pytest.mark.parametrize("fmt, version, length", [
    ("<3iq", (0, 0, 0), 20),  # ultralytics/yolov3 and PyTorch-YOLOv3 for a model trained from scratch
    ("<3ii", (0, 0, 0), 16),  # the same version with Darknet's own 16 bytes
    ("<3iq", (0, 1, 0), 20),  # a port's copy of a 0.1 file's version, over its own 20 bytes
])
def test_port_headers_are_read_by_the_one_length_the_size_fits(tmp_path: Path, fmt: str, version, length: int) -> None:
    path = tmp_path / "port.weights"
    path.write_bytes(struct.pack(fmt, *version, 4242) + struct.pack(f"<{TINY_FLOATS}f", *range(TINY_FLOATS)))
    with pytest.warns(UserWarning, match=f"{'.'.join(map(str, version))}.*assumed a {length}-byte header"):
        state, info = read_darknet_weights(path, TINY, TINY_CLASSES)
    assert (info.header.nbytes, info.header.seen, info.has_classifier) == (length, 4242, True)
    assert torch.equal(state["stem.bn.bias"], torch.tensor([0.0, 1.0]))  # the floats start right after it
    assert torch.equal(state["head.fc.weight"], arange(257, 3, 4))
    assert info.header.standard().pack() == struct.pack("<3iq", 0, 2, 0, 4242)  # written back as Darknet reads it


def test_port_header_that_fits_no_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "port.weights"
    path.write_bytes(struct.pack("<3iq", 0, 0, 0, 0) + struct.pack(f"<{TINY_FLOATS + 3}f", *range(TINY_FLOATS + 3)))
    with pytest.raises(CheckpointError, match="version 0.0.0 is unknown .* fits neither a 16- nor a 20-byte header"):
        read_darknet_weights(path, TINY, TINY_CLASSES)


def test_other_architecture_refused_by_darknet53_reader(tmp_path: Path) -> None:
    path = pack_tiny_file(tmp_path / "darknet53.weights")
    with pytest.raises(CheckpointError) as exc_info:
        backbonekit.create_model("darknet53", pretrained=path)
    message = first_line_error(exc_info)
    assert "expected 40,620,640 float32 values" in message and "or 41,645,640" in message
    assert f"found {TINY_FLOATS}" in message and "reading stopped in layer 0 (stem" in message


def test_empty_and_text_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.weights").write_bytes(b"")
    (tmp_path / "notes.weights").write_text("not weights at all, just some text\n")
    with pytest.raises(CheckpointError, match="at least 16 bytes"):
        read_weights(tmp_path / "empty.weights")
    with pytest.raises(CheckpointError, match="not a torch.save or safetensors file"):
        read_weights(tmp_path / "notes.weights")


def test_damaged_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    write_safetensors({"conv1.weight": torch.ones(8, 3, 3, 3)}, path, "resnet18", {})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="expected a valid safetensors file"):
        read_weights(path)


def test_legacy_torch_file_is_read_as_torch(tmp_path: Path) -> None:
    path = tmp_path / "legacy.weights"  # a Darknet-like name, but the content decides
    torch.save({"fc.weight": torch.ones(2, 3)}, path, _use_new_zipfile_serialization=False)
    state, meta = read_weights(path)
    assert meta["format"] == "torch" and torch.equal(state["fc.weight"], torch.ones(2, 3))


def test_safetensors_header_length_starting_with_a_pickle_byte_is_read_as_safetensors(tmp_path: Path) -> None:
    # the 8-byte little-endian header length 0x180 starts with 0x80, the first byte of a legacy pickle
    import json

    header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (0x180 - len(header))  # the format pads its JSON header with spaces
    path = tmp_path / "padded.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0))
    state, meta = read_weights(path)
    assert meta["format"] == "safetensors" and state["fc.weight"].tolist() == [1.0, 2.0]


def test_weights_for_another_model_are_refused(tmp_path: Path) -> None:
    path = pack_tiny_file(tmp_path / "tiny.weights")
    with pytest.raises(CheckpointError) as exc_info:
        backbonekit.create_model("resnet18", pretrained=path)
    assert "expected 40,620,640" in first_line_error(exc_info)  # read as darknet53, refused by size
    path = tmp_path / "d.safetensors"
    write_safetensors({"stem.conv.weight": torch.ones(1)}, path, "darknet53", {"act_slope": 0.1})
    with pytest.raises(CheckpointError, match="holds weights for darknet53, found resnet18"):
        backbonekit.create_model("resnet18", pretrained=path)


# -- full-size darknet53 files ----------------------------------------------------------------
@pytest.fixture(scope="module")
def darknet_ref() -> Darknet:
    torch.manual_seed(0)
    return randomize_batchnorm(backbonekit.create_model("darknet53"))


@pytest.fixture(scope="module")
def darknet_files(darknet_ref: Darknet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("darknet53")
    files = {"classifier": folder / "classifier.bin", "backbone": folder / "backbone.bin"}
    write_darknet_weights(darknet_ref.state_dict(), files["classifier"])
    write_darknet_weights(darknet_ref.state_dict(), files["backbone"], include_classifier=False)
    yield files
    for path in files.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_darknet53_file_sizes_match_the_published_layout(darknet_files: dict[str, Path]) -> None:
    assert darknet_files["classifier"].stat().st_size == CLASSIFIER_FILE_BYTES
    assert darknet_files["backbone"].stat().st_size == BACKBONE_FILE_BYTES
    assert inspect_darknet_file(darknet_files["classifier"]).has_classifier
    assert not inspect_darknet_file(darknet_files["backbone"]).has_classifier


def test_darknet53_round_trip_is_exact(darknet_ref: Darknet, darknet_files: dict[str, Path]) -> None:
    state, meta = read_weights(darknet_files["classifier"])
    own = darknet_ref.state_dict()
    assert meta["format"] == "darknet" and meta["model_kwargs"] == {"act_slope": 0.1}
    assert set(state) == set(own)
    assert all(torch.equal(state[k], own[k]) for k in own)


def test_create_model_from_classifier_file(darknet_ref: Darknet, darknet_files: dict[str, Path],
                                           image: torch.Tensor) -> None:
    model = backbonekit.create_model("darknet53", pretrained=darknet_files["classifier"]).eval()
    with torch.no_grad():
        assert torch.equal(model(image), darknet_ref(image))


def test_create_model_from_backbone_file_keeps_head_initialised(darknet_ref: Darknet, darknet_files: dict[str, Path],
                                                               image: torch.Tensor) -> None:
    torch.manual_seed(123)
    model = backbonekit.create_model("darknet53", pretrained=darknet_files["backbone"]).eval()
    torch.manual_seed(123)
    fresh = backbonekit.create_model("darknet53")
    assert torch.equal(model.head.fc.weight, fresh.head.fc.weight)
    with torch.no_grad():
        assert torch.equal(model.forward_features(image), darknet_ref.forward_features(image))


def test_backbone_only_safetensors_keeps_head_initialised(darknet_ref: Darknet, darknet_files: dict[str, Path],
                                                          tmp_path: Path, image: torch.Tensor) -> None:
    path = tmp_path / "backbone.safetensors"
    assert convert_weights(darknet_files["classifier"], path, backbone_only=True).num_tensors == 314 - 2
    model = backbonekit.create_model("darknet53", pretrained=path).eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(image), darknet_ref.forward_features(image))


def test_file_kind_comes_from_content_not_name(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    misnamed = tmp_path / "darknet53.conv.74"
    os.link(darknet_files["classifier"], misnamed)  # a classifier file under the backbone file's name
    state, meta = read_weights(misnamed)
    assert not meta["backbone_only"] and "head.fc.weight" in state


def test_truncated_darknet53_file_names_the_layer(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "darknet53.weights"
    with open(darknet_files["classifier"], "rb") as f:
        truncated.write_bytes(f.read(100_000_000))
    with pytest.raises(CheckpointError) as exc_info:
        backbonekit.create_model("darknet53", pretrained=truncated)
    message = first_line_error(exc_info)
    assert "found 24,999,995" in message and "reading stopped in layer 66 (stages.4.blocks.1.conv1" in message


# -- conversions ------------------------------------------------------------------------------
def timm_darknet53(slope: float) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("darknet53", pretrained=False,
                             act_layer=functools.partial(nn.LeakyReLU, negative_slope=slope)).eval()


def test_darknet_to_timm_warns_and_matches_timm_with_darknet_slope(darknet_ref: Darknet, darknet_files: dict[str, Path],
                                                                   tmp_path: Path, image: torch.Tensor) -> None:
    out = tmp_path / "timm.pth"
    with pytest.warns(UserWarning, match="slope 0.01 but these weights were trained with 0.1"):
        result = convert_weights(darknet_files["classifier"], out, to="timm")
    assert result.model == "darknet53" and result.model_kwargs == {"act_slope": 0.1}
    timm_model = timm_darknet53(0.1)
    timm_model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert_same_network_output(timm_model(image), darknet_ref(image), timm_model)


@pytest.mark.slow  # five full-size conversions and four darknet53 builds
def test_timm_state_dict_through_every_format(tmp_path: Path, image: torch.Tensor) -> None:
    torch.manual_seed(2)
    timm_model = randomize_batchnorm(timm_darknet53(0.01))  # timm's own slope, carried as act_slope=0.01
    src = tmp_path / "timm_darknet53.pth"
    torch.save(timm_model.state_dict(), src)
    with torch.no_grad():
        expected = timm_model(image)
    checkpoint, safetensors_file = tmp_path / "bk.pth", tmp_path / "bk.safetensors"
    assert convert_weights(src, checkpoint).model_kwargs == {"act_slope": 0.01}
    assert torch.load(checkpoint, weights_only=True)["model_kwargs"] == {"act_slope": 0.01}
    convert_weights(checkpoint, safetensors_file)
    for path in (checkpoint, safetensors_file):
        model = backbonekit.create_model("darknet53", pretrained=path).eval()
        assert model.act_slope == 0.01
        with torch.no_grad():
            torch.testing.assert_close(model(image), expected)
    darknet_file = tmp_path / "from_timm.weights"
    with pytest.warns(UserWarning, match="Darknet computes LeakyReLU with slope 0.1"):
        convert_weights(safetensors_file, darknet_file)
    model = backbonekit.create_model("darknet53", pretrained=darknet_file, act_slope=0.01).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(image), expected)
    back = tmp_path / "back_to_timm.pth"
    convert_weights(safetensors_file, back, to="timm")
    original = timm_model.state_dict()
    converted = torch.load(back, weights_only=True)
    assert set(converted) == set(original) and all(torch.equal(converted[k], original[k]) for k in original)


def test_darknet_safetensors_darknet_is_byte_exact(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    safetensors_file, again = tmp_path / "d.safetensors", tmp_path / "again.weights"
    convert_weights(darknet_files["classifier"], safetensors_file)
    _, meta = read_weights(safetensors_file)
    assert meta["model"] == "darknet53" and meta["model_kwargs"] == {"act_slope": 0.1}
    convert_weights(safetensors_file, again)
    assert again.read_bytes() == darknet_files["classifier"].read_bytes()
    backbone = tmp_path / "again.conv.74"
    convert_weights(safetensors_file, backbone, backbone_only=True)
    assert backbone.read_bytes() == darknet_files["backbone"].read_bytes()


def test_torchvision_resnet_round_trip(tmp_path: Path, image: torch.Tensor) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    tv_model = randomize_batchnorm(torchvision.models.resnet18())
    src = tmp_path / "resnet18_tv.pth"
    torch.save(tv_model.state_dict(), src)
    with torch.no_grad():
        expected = tv_model(image)
    safetensors_file, back = tmp_path / "r18.safetensors", tmp_path / "r18_back.pth"
    assert convert_weights(src, safetensors_file).model == "resnet18"  # inferred from keys and shapes
    convert_weights(safetensors_file, back, to="torchvision")
    fresh = torchvision.models.resnet18().eval()
    fresh.load_state_dict(torch.load(back, weights_only=True), strict=True)
    ours = backbonekit.create_model("resnet18", pretrained=safetensors_file).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(image), expected, rtol=0, atol=0)
        torch.testing.assert_close(ours(image), expected)


def test_conversion_errors(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torchvision has no model"):
        convert_weights(darknet_files["backbone"], tmp_path / "x.pth", to="torchvision")
    with pytest.raises(ValueError, match="cannot tell the output format"):
        output_format_for(tmp_path / "x.bin")
    assert output_format_for("darknet53.conv.74") == "darknet" and output_format_for("a.weights") == "darknet"
    with pytest.raises(CheckpointError, match="records weights for darknet53, found --model resnet18"):
        convert_weights(darknet_files["backbone"], tmp_path / "x.safetensors", model="resnet18")
    not_a_resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)}
    torch.save(not_a_resnet, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="cannot tell which model"):
        convert_weights(tmp_path / "bad.pth", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="does not fit ResNet: 1.. missing keys"):
        convert_weights(tmp_path / "bad.pth", tmp_path / "x.safetensors", model="resnet18")
    (tmp_path / "bad.pth").unlink()
    assert not list(tmp_path.iterdir())  # nothing written, no temporary files left


def test_cli_convert(darknet_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "timm.pth"
    assert cli.main(["convert", str(darknet_files["backbone"]), str(out), "--to", "timm"]) == 0
    captured = capsys.readouterr()
    assert "(darknet) ->" in captured.out and "(timm)" in captured.out
    assert captured.err.count("\n") == 1 and "warning: timm's darknet53" in captured.err
    assert "stem.conv1.conv.weight" in torch.load(out, weights_only=True)
    bad = pack_tiny_file(tmp_path / "tiny.weights")
    assert cli.main(["convert", str(bad), str(tmp_path / "y.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "41,645,640" in err


def test_header_struct_sizes() -> None:
    assert len(DarknetHeader(0, 2, 0, 1).pack()) == 20 and len(DarknetHeader(0, 1, 0, 1).pack()) == 16


# -- files without BatchNorm's num_batches_tracked counters ---------------------------------------
# Every torchvision file written before PyTorch 0.4.1 (resnet50-19c8e357.pth) and many converted files lack them;
# BatchNorm2d.load_state_dict(strict=True) accepts that and sets them to 0, so the loader must too.
def without_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _torchvision_reference(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    torchvision = pytest.importorskip("torchvision")
    model = randomized(getattr(torchvision.models, name)())
    return model, without_counters(model.state_dict()), name


def _timm_reference() -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    timm = pytest.importorskip("timm")
    model = randomized(timm.create_model("darknet53"))
    return model, without_counters(model.state_dict()), "darknet53"


def _save_as(kind: str, state: dict[str, torch.Tensor], model: str, path: Path) -> Path:
    if kind == "state_dict":
        torch.save(state, path)
    elif kind == "backbonekit":
        torch.save({"format": "backbonekit", "model": model, "model_kwargs": {}, "state_dict": state}, path)
    else:
        path = path.with_suffix(".safetensors")
        write_safetensors(state, path, model, {})
    return path


@pytest.mark.parametrize("source, kind", [
    ("torchvision-resnet18", "state_dict"),
    ("torchvision-resnet50", "state_dict"),  # the classic resnet50-19c8e357.pth case
    ("torchvision-resnet18", "backbonekit"),
    ("torchvision-resnet18", "safetensors"),
    ("timm-darknet53", "state_dict"),
    ("timm-darknet53", "backbonekit-names"),
])
def test_file_without_batchnorm_counters_loads_like_the_reference(source: str, kind: str, tmp_path: Path,
                                                                  image: torch.Tensor) -> None:
    from backbonekit.weights import backbonekit_darknet_to_timm, timm_darknet_to_backbonekit

    reference, state, name = _timm_reference() if source.startswith("timm") else _torchvision_reference(
        source.split("-")[1])
    slope = {"act_slope": 0.01} if name == "darknet53" else {}
    if kind == "backbonekit-names":  # a darknet53 state_dict in this package's names, without counters
        state, kind = timm_darknet_to_backbonekit(state), "backbonekit"
    path = _save_as(kind, state, name, tmp_path / "old.pth")
    assert not any(k.endswith("num_batches_tracked") for k in read_weights(path)[0])
    loaded = read_weights(path)[0]
    reference.load_state_dict(backbonekit_darknet_to_timm(loaded) if "stem.conv.weight" in loaded else loaded,
                              strict=True)  # torch itself accepts the file
    model = backbonekit.create_model(name, pretrained=path, **slope).eval()
    counters = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(v) == 0 for v in counters)
    with torch.no_grad():
        assert_same_network_output(model(image), reference.eval()(image), reference)


def test_convert_a_file_without_batchnorm_counters(tmp_path: Path, image: torch.Tensor) -> None:
    reference, state, _ = _torchvision_reference("resnet18")
    src, dst = tmp_path / "old.pth", tmp_path / "new.safetensors"
    torch.save(state, src)
    assert convert_weights(src, dst).model == "resnet18"  # the model is inferred despite the missing counters
    written = read_weights(dst)[0]
    assert sum(k.endswith("num_batches_tracked") for k in written) == 20  # filled, like BatchNorm does
    with torch.no_grad():
        expected = reference(image)
        torch.testing.assert_close(backbonekit.create_model("resnet18", pretrained=dst).eval()(image), expected)


def test_a_missing_batchnorm_is_still_refused(tmp_path: Path) -> None:
    _, state, _ = _torchvision_reference("resnet18")
    del state["layer1.0.bn1.running_mean"]  # a counter can be filled; a statistic cannot
    torch.save(state, tmp_path / "broken.pth")
    missing = r"2 missing keys \[layer1.0.bn1.num_batches_tracked, layer1.0.bn1.running_mean\]"
    with pytest.raises(CheckpointError, match=missing):
        backbonekit.create_model("resnet18", pretrained=tmp_path / "broken.pth")
