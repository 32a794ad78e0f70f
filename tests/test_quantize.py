"""int8 export: accuracy of a trained model against fp32, the graph really quantized, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import backbonekit as bk
from helpers import with_random_bn_statistics

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("sklearn")

from backbonekit.cli import main  # noqa: E402
from backbonekit.onnx_meta import export_onnx, read_metadata, write_metadata  # noqa: E402
from backbonekit.quantize import MIN_CALIB_IMAGES, export_int8, fp32_nodes  # noqa: E402
from backbonekit.train import TrainConfig, evaluate_checkpoint, train  # noqa: E402
from backbonekit.train.onnx_eval import evaluate_onnx  # noqa: E402

QUIET = dict(log=lambda _: None)
PREP = {"dataset": "fake", "classes": [f"class{i}" for i in range(10)], "image_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.29, 0.29, 0.29]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """resnet18 trained on digits for 3 epochs (~95% top-1), exported fp32 and int8 (calibrated on 128 train images)."""
    tmp = tmp_path_factory.mktemp("int8")
    train(TrainConfig(model="resnet18", dataset="digits", epochs=3, batch_size=64, device="cpu", workers=0,
                      out=str(tmp / "run")), **QUIET)
    ckpt = tmp / "run" / "best.pt"
    fp32 = export_onnx(ckpt, tmp / "fp32.onnx")
    report = export_int8(ckpt, tmp / "int8.onnx", calibrate="digits", calib_images=128)
    return {"ckpt": ckpt, "fp32": fp32, "int8": report.path, "report": report}


def test_int8_top1_within_half_a_point_of_fp32(trained):
    reference = evaluate_checkpoint(trained["ckpt"], device="cpu", out=trained["ckpt"].parent / "e0", **QUIET)
    fp32 = evaluate_onnx(trained["fp32"], out=trained["ckpt"].parent / "e1", **QUIET)
    int8 = evaluate_onnx(trained["int8"], out=trained["ckpt"].parent / "e2", **QUIET)
    assert reference.top1 > 0.8  # a trained model: the comparison below means something
    # the ONNX file, preprocessed from its own metadata, scores what the checkpoint scores
    assert fp32.count == reference.count == 360 and fp32.top1 == reference.top1
    assert fp32.loss == pytest.approx(reference.loss, rel=1e-4)
    assert torch.equal(fp32.preds, reference.preds)
    assert abs(int8.top1 - fp32.top1) <= 0.005, (fp32.top1, int8.top1)  # the bar: 0.5 points
    assert (trained["ckpt"].parent / "e2" / "classification_report.txt").is_file()


def test_int8_graph_is_quantized_and_keeps_metadata(trained):
    proto = onnx.load(str(trained["int8"]))
    inits = {i.name: i for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    for conv in convs:  # weights: int8 with one scale per output channel
        dq = produced_by[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[0]]
    activations = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(z.data_type == onnx.TensorProto.UINT8 for z in activations)
    report = trained["report"]
    assert report.int8_nodes >= len(convs) == 20  # resnet18: 20 convs (17 + 3 downsample)
    # torch's mean over H, W exports as ReduceMean, which ONNX Runtime cannot quantize; the flatten after it follows
    assert {(n.op_type, n.reason.split(" (")[0]) for n in report.fp32} == {
        ("ReduceMean", "ONNX Runtime's quantizer has no int8 form of ReduceMean"),
        ("Reshape", "its input comes from an fp32 node")}
    assert fp32_nodes(proto) == report.fp32
    meta = read_metadata(trained["int8"])
    assert meta["dataset"] == "digits" and meta["quantization"]["images"] == 128
    assert meta["mean"] == read_metadata(trained["fp32"])["mean"]


def test_evaluate_cli_takes_the_int8_file(trained, capsys):
    out = trained["ckpt"].parent / "e3"
    assert main(["evaluate", str(trained["int8"]), "--format", "json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 360
    assert printed["top1"] == pytest.approx(evaluate_onnx(trained["int8"], out=out, **QUIET).top1)


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_fp32(tmp_path_factory) -> Path:
    """A random-weight resnet18 at 32x32 exported with metadata (fake dataset's classes)."""
    torch.manual_seed(0)
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=10))
    return export_onnx(model, tmp_path_factory.mktemp("rand") / "fp32.onnx", preprocessing=PREP)


def test_too_small_calibration_sets(random_fp32, tmp_path):
    with pytest.raises(ValueError, match=f"calibration set too small: expected --calib-images >= {MIN_CALIB_IMAGES}, "
                                         "found 0"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate="fake", calib_images=0)
    with pytest.raises(ValueError, match="calibration set too small: fake:4 train split has 4 images"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate="fake:4")
    with pytest.raises(ValueError, match="calibration set too small: an array of 3 images gives 3"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate=np.zeros((3, 3, 32, 32), np.float32))
    assert not (tmp_path / "q.onnx").exists()


def test_calibration_images_of_the_wrong_shape(random_fp32, tmp_path):
    with pytest.raises(ValueError, match=r"have 1 channels \(shape \(1, 32, 32\)\), the model takes 3"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate=np.zeros((16, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="are 40x40, the model takes 32x32"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate=np.zeros((16, 3, 40, 40), np.float32))
    with pytest.raises(ValueError, match=r"expected calibration images as a float \(N, C, H, W\) array"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate=np.zeros((16, 32, 32), np.uint8))


def test_a_model_the_quantizer_cannot_handle(tmp_path):
    from onnx import TensorProto, helper

    from backbonekit.deploy.metadata import classifier_metadata

    # an operator from a domain no runtime knows: the quantizer's calibration session cannot run it
    graph = helper.make_graph([helper.make_node("Mystery", ["input"], ["logits"], domain="example.custom")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("example.custom", 1)]), str(path))
    write_metadata(path, classifier_metadata(classes=PREP["classes"], image_size=32, mean=PREP["mean"],
                                             std=PREP["std"]))
    with pytest.raises(ValueError, match="ONNX Runtime's quantizer cannot handle this model: ") as info:
        export_int8(path, tmp_path / "q.onnx", calibrate=np.zeros((16, 3, 32, 32), np.float32))
    assert "\n" not in str(info.value)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read .*junk.onnx: expected an ONNX model file"):
        export_int8(junk, tmp_path / "q.onnx", calibrate="fake")


# -- the 8-bit types and the weights' range (x86 CPUs without VNNI) ----------------------------------
RANDOM_CALIB = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)


def conv_weights(path: Path) -> list[np.ndarray]:
    """The quantized weight tensor of every Conv of a QDQ file: the initializer its weight's DequantizeLinear reads."""
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    return [numpy_helper.to_array(inits[produced_by[n.input[1]].input[0]]) for n in proto.graph.node
            if n.op_type == "Conv"]


def activation_zero_point_types(path: Path) -> set[int]:
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"}


def test_default_int8_has_7_bit_weights_and_says_so(random_fp32, tmp_path):
    report = export_int8(random_fp32, tmp_path / "q.onnx", calibrate=RANDOM_CALIB)
    weights = conv_weights(report.path)
    assert len(weights) == 20 and all(w.dtype == np.int8 for w in weights)
    # symmetric per-channel MinMax maps each output channel's largest |weight| to the top of the range:
    # 64 for 7 bits, so that 2 x 255 x 64 = 32,640 fits VPMADDUBSW's int16 on x86 CPUs without VNNI
    assert all((np.abs(w).reshape(len(w), -1).max(1) == 64).all() for w in weights)
    assert activation_zero_point_types(report.path) == {onnx.TensorProto.UINT8}
    quantization = read_metadata(report.path)["quantization"]
    recorded = ("activations", "weights", "weight_range", "reduce_range", "x86_without_vnni")
    assert {k: quantization[k] for k in recorded} == {
        "activations": "uint8", "weights": "int8 per-channel", "weight_range": [-64, 64], "reduce_range": True,
        "x86_without_vnni": "no saturation"}
    assert ("activations uint8, weights int8 per-channel in [-64, 64] (reduce_range); on x86 CPUs without VNNI: "
            "no saturation") in report.summary().splitlines()[1]


def test_default_int8_weights_equal_onnxruntimes_own_with_reduce_range(random_fp32, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": RANDOM_CALIB}])

        def get_next(self):
            return next(self.batches, None)

    prepared, direct = tmp_path / "prepared.onnx", tmp_path / "direct.onnx"
    quant_pre_process(str(random_fp32), str(prepared))
    quantize_static(str(prepared), str(direct), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ours = export_int8(random_fp32, tmp_path / "q.onnx", calibrate=RANDOM_CALIB).path
    assert len(conv_weights(direct)) == 20
    assert all(np.array_equal(a, b) for a, b in zip(conv_weights(ours), conv_weights(direct), strict=True))


@pytest.mark.parametrize("options, weight_dtype, top, activations, verdict", [
    ({"reduce_range": False}, np.int8, 127, onnx.TensorProto.UINT8, "may saturate"),
    ({"activation_type": "int8"}, np.int8, 64, onnx.TensorProto.INT8, "no saturation"),
    ({"weight_type": "uint8", "reduce_range": False}, np.uint8, None, onnx.TensorProto.UINT8, "no saturation"),
])
def test_int8_settings_can_be_overridden(random_fp32, tmp_path, options, weight_dtype, top, activations, verdict):
    report = export_int8(random_fp32, tmp_path / "q.onnx", calibrate=RANDOM_CALIB, **options)
    weights = conv_weights(report.path)
    assert all(w.dtype == weight_dtype for w in weights)
    if top is not None:
        assert all((np.abs(w).reshape(len(w), -1).max(1) == top).all() for w in weights)
    assert activation_zero_point_types(report.path) == {activations}
    quantization = read_metadata(report.path)["quantization"]
    assert quantization["x86_without_vnni"].startswith(verdict)
    assert quantization["reduce_range"] == options.get("reduce_range", True)
    assert verdict in report.summary()


@pytest.mark.parametrize("options, message", [
    ({"activation_type": "int16"}, "activation_type must be one of uint8, int8, found 'int16'"),
    ({"weight_type": "QInt8"}, "weight_type must be one of uint8, int8, found 'QInt8'"),
])
def test_unknown_int8_types_one_line(random_fp32, tmp_path, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        export_int8(random_fp32, tmp_path / "q.onnx", calibrate=RANDOM_CALIB, **options)
    assert not (tmp_path / "q.onnx").exists()


class TinyDetector(torch.nn.Module):
    """Two convs, then a YOLO-like decoding (sigmoid, scale by a stride, exp) that must stay fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.LeakyReLU(0.1),
                                        torch.nn.Conv2d(8, 7, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.body(x).flatten(2).transpose(1, 2)  # (N, HW, 7)
        return torch.cat([raw[..., :2].sigmoid() * 2.0, raw[..., 2:4].exp(), raw[..., 4:].sigmoid()], -1)


def test_detector_decoding_stays_fp32(tmp_path):
    from backbonekit.deploy.metadata import detector_metadata
    from backbonekit.export import export_model
    from backbonekit.quantize import tail_nodes

    path = export_model(TinyDetector().eval(), tmp_path / "det.onnx", input_size=32, dynamic_batch=True)
    write_metadata(path, detector_metadata(classes=["a", "b"], input_size=32))
    with pytest.raises(ValueError, match="expected a dataset as one of .*found 'fake'"):
        export_int8(path, tmp_path / "q.onnx", calibrate="fake")  # a detector calibrates on a detection dataset
    proto = onnx.load(str(path))
    tail = {n.op_type for n in proto.graph.node if n.name in tail_nodes(proto)}
    assert {"Sigmoid", "Exp", "Concat"} <= tail and "Conv" not in tail and "LeakyRelu" not in tail
    calib = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    report = export_int8(path, tmp_path / "q.onnx", calibrate=calib)
    assert report.int8_nodes >= 3  # conv, leaky relu, conv
    kept = {n.op_type for n in report.fp32 if n.reason.startswith("kept in fp32 on purpose")}
    assert {"Sigmoid", "Exp", "Concat"} <= kept
    quantized = onnx.load(str(report.path))
    produced_by = {o: n for n in quantized.graph.node for o in n.output}
    for node in quantized.graph.node:
        if node.op_type in ("Sigmoid", "Exp"):
            assert all(produced_by[i].op_type != "DequantizeLinear" for i in node.input if i in produced_by)



# -- the CLI ---------------------------------------------------------------------------------------
def test_export_cli_int8_from_a_run_folder(trained, capsys):
    out = trained["ckpt"].parent.parent / "cli-int8.onnx"
    assert main(["export", str(trained["ckpt"].parent), "--int8", "--calibrate", "digits", "--calib-images", "16",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 16 images of digits (train split)" in printed
    assert "fp32: 1 node(s) (ReduceMean): ONNX Runtime's quantizer has no int8 form of ReduceMean" in printed
    meta = read_metadata(out)
    assert meta["classes"] == read_metadata(trained["fp32"])["classes"] and meta["quantization"]["images"] == 16


def test_export_cli_int8_from_a_model_name(tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    assert main(["export", "resnet18", "--num-classes", "10", "--input-size", "32", "--int8", "--calibrate", "fake",
                 "--calib-images", "8", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 8 images of fake (train split)" in printed
    assert "weights int8 per-channel in [-64, 64] (reduce_range); on x86 CPUs without VNNI: no saturation" in printed
    meta = read_metadata(out)
    assert meta["image_size"] == 32 and len(meta["classes"]) == 10 and meta["quantization"]["images"] == 8
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    assert max(np.abs(w).max() for w in conv_weights(out)) == 64


def test_export_cli_int8_no_reduce_range(tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    assert main(["export", "resnet18", "--num-classes", "10", "--input-size", "32", "--int8", "--calibrate", "fake",
                 "--calib-images", "8", "--no-reduce-range", "-o", str(out)]) == 0
    assert "weights int8 per-channel in [-127, 127]; on x86 CPUs without VNNI: may saturate" in capsys.readouterr().out
    assert read_metadata(out)["quantization"]["reduce_range"] is False
    assert max(np.abs(w).max() for w in conv_weights(out)) == 127


@pytest.mark.parametrize("flags, message", [
    (["--int8"], "--int8 needs calibration images: expected --calibrate DATASET"),
    (["--calibrate", "fake"], "--calibrate fake is for int8 export: expected --int8 with it"),
    (["--no-reduce-range"], "--no-reduce-range is for int8 export: expected --int8 with it"),
    (["--int8", "--calibrate", "fake", "--format", "torchscript"], "--int8 writes ONNX: expected --format onnx"),
    (["--int8", "--calibrate", "fake", "--features-only"], "--int8 quantizes classifiers: expected no --features-only"),
    (["--int8", "--calibrate", "fake", "--calib-images", "2"], "calibration set too small: expected --calib-images >= 8"),
])
def test_export_cli_int8_bad_input_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "q.onnx"
    assert main(["export", "resnet18", "--input-size", "32", "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
