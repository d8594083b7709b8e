"""Binary ``.caffemodel`` weights (:mod:`weight_converters.caffemodel`), pure numpy: what Google's protobuf
serializes from Caffe's message types reads back array for array (packed and unpacked, current and V1
format, unknown fields skipped); the writer's bytes are what protobuf parses; bad files fail in one line;
``read_caffe_weights`` tells ``.npy`` from ``.caffemodel`` by content; GOTURN's loader and ``parity check
--weights FILE.caffemodel`` get the same weights as from the equivalent ``.npy``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.weight_converters.test_caffe import CHW, FC_SHAPES, caffe_convs, expected_reference
from weight_converters import goturn as goturn_module
from weight_converters.caffe import read_caffe_weights
from weight_converters.goturn import LEGACY_BLOB_SQUEEZE, goturn_caffe_to_torch, goturn_to_caffe, load_goturn_weights
from weight_converters.npy_safe import save_caffe_npy
from weight_converters.caffemodel import (CAFFEMODEL_FORMAT, NET_LAYER_FIELD, V1_LAYER_TYPES, encode_caffemodel,
                                          parse_caffemodel, read_caffemodel, write_caffemodel)

TYPES = {"conv1": "Convolution", "fc6": "InnerProduct"}


def two_layers(rng, dtype=np.float32) -> dict[str, list[np.ndarray]]:
    return {"conv1": [rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)],
            "fc6": [rng.standard_normal((5, 36)).astype(dtype), rng.standard_normal(5).astype(dtype)]}


def assert_same_blobs(got, want):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
            assert g.tobytes() == w.tobytes(), name


# --- An independent encoder: Google's protobuf with Caffe's message types ---------------------------------
def caffe_messages(packed: bool) -> dict[str, type]:
    """Message classes for the subset of caffe.proto this reader needs, plus fields it must skip, built from a
    FileDescriptorProto (no caffe_pb2 needed). ``packed``: as caffe.proto declares (``[packed = true]``) or
    the proto2 default (one field per value)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fdp = descriptor_pb2.FileDescriptorProto(name=f"caffe_subset_{packed}.proto", package="caffe", syntax="proto2")

    def message(name, *fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, *extra in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if ftype == F.TYPE_MESSAGE:
                f.type_name = ".caffe." + extra[0]
            elif extra and extra[0] == "packed" and packed:
                f.options.packed = True

    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, "packed"))
    message("BlobProto", ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape"), ("data", 5, F.TYPE_FLOAT, rep, "packed"),
            ("diff", 6, F.TYPE_FLOAT, rep, "packed"), ("double_data", 8, F.TYPE_DOUBLE, rep, "packed"),
            ("double_diff", 9, F.TYPE_DOUBLE, rep, "packed"), ("num", 1, F.TYPE_INT32, opt),
            ("channels", 2, F.TYPE_INT32, opt), ("height", 3, F.TYPE_INT32, opt), ("width", 4, F.TYPE_INT32, opt))
    message("ParamSpec", ("name", 1, F.TYPE_STRING, opt), ("lr_mult", 3, F.TYPE_FLOAT, opt),
            ("decay_mult", 4, F.TYPE_FLOAT, opt))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, opt), ("type", 2, F.TYPE_STRING, opt),
            ("bottom", 3, F.TYPE_STRING, rep), ("top", 4, F.TYPE_STRING, rep), ("phase", 10, F.TYPE_INT32, opt),
            ("loss_weight", 5, F.TYPE_FLOAT, rep), ("param", 6, F.TYPE_MESSAGE, rep, "ParamSpec"),
            ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto"),
            # not in caffe.proto: a 64-bit and a large-numbered field the reader has never heard of
            ("future_double", 999, F.TYPE_DOUBLE, opt), ("future_id", 5000, F.TYPE_UINT64, opt))
    message("V1LayerParameter", ("bottom", 2, F.TYPE_STRING, rep), ("top", 3, F.TYPE_STRING, rep),
            ("name", 4, F.TYPE_STRING, opt), ("type", 5, F.TYPE_INT32, opt),  # enum LayerType: same wire type
            ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto"), ("blobs_lr", 7, F.TYPE_FLOAT, rep),
            ("weight_decay", 8, F.TYPE_FLOAT, rep))
    message("NetParameter", ("name", 1, F.TYPE_STRING, opt), ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter"),
            ("input", 3, F.TYPE_STRING, rep), ("force_backward", 5, F.TYPE_BOOL, opt),
            ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("BlobShape", "BlobProto", "LayerParameter", "V1LayerParameter", "NetParameter")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}")) for n in names}


def fill_blob(blob, arr: np.ndarray, *, legacy: bool = False):
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - arr.ndim) + arr.shape
    else:
        blob.shape.dim.extend(arr.shape)
    if arr.dtype == np.float64:
        blob.double_data.extend(arr.ravel().tolist())
        blob.double_diff.extend((-arr).ravel().tolist())  # gradients in a snapshot: skipped
    else:
        blob.data.extend(arr.ravel().tolist())
        blob.diff.extend((2 * arr).ravel().tolist())


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_protobuf_serialized_net_reads_back_array_for_array(tmp_path, packed):
    msgs = caffe_messages(packed)
    rng = np.random.default_rng(0)
    want = two_layers(rng)
    want["scale"] = [rng.standard_normal((2, 3))]  # float64: saved as double_data
    net = msgs["NetParameter"](name="tracker", input=["image"], force_backward=True)
    data = net.layer.add(name="data", type="Input", top=["image"])  # no blobs: left out
    data.phase = 1
    for name, blobs in want.items():
        layer = net.layer.add(name=name, type=TYPES.get(name, "Scale"), bottom=["image"], top=[name],
                              loss_weight=[0.5, 1.5], future_double=3.25, future_id=2 ** 63 + 5)
        layer.param.add(name=f"{name}_w", lr_mult=10.0, decay_mult=1.0)
        for arr in blobs:
            fill_blob(layer.blobs.add(), arr)
    net.layer.add(name="relu6", type="ReLU", bottom=["fc6"], top=["fc6"])
    raw = net.SerializeToString()
    # the encoding is the one asked for: float data as one packed field (tag 0x2a) or one 0x2d tag per value
    blob0 = net.layer[1].blobs[0].SerializeToString()
    assert (blob0.count(b"\x2d") >= want["conv1"][0].size) is not packed
    path = tmp_path / "tracker.caffemodel"
    path.write_bytes(raw)
    assert_same_blobs(read_caffemodel(path), want)
    layers = parse_caffemodel(raw)
    assert [(layer.name, layer.type, len(layer.blobs)) for layer in layers] == [
        ("data", "Input", 0), ("conv1", "Convolution", 2), ("fc6", "InnerProduct", 2), ("scale", "Scale", 1),
        ("relu6", "ReLU", 0)]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_protobuf_serialized_v1_net_keeps_legacy_4d_shapes(tmp_path, packed):
    msgs = caffe_messages(packed)
    want = two_layers(np.random.default_rng(1))
    net = msgs["NetParameter"](name="CaffeNet")
    for name, blobs in want.items():
        layer = net.layers.add(name=name, type=V1_LAYER_TYPES[TYPES[name]], bottom=["data"], blobs_lr=[1.0, 2.0],
                               weight_decay=[1.0, 0.0])
        for arr in blobs:
            fill_blob(layer.blobs.add(), arr, legacy=True)
    net.layers.add(name="relu1", type=V1_LAYER_TYPES["ReLU"])
    path = tmp_path / "caffenet.caffemodel"
    path.write_bytes(net.SerializeToString())
    got = read_caffemodel(path)
    legacy = {name: [arr.reshape((1,) * (4 - arr.ndim) + arr.shape) for arr in blobs]
              for name, blobs in want.items()}
    assert got["fc6"][0].shape == (1, 1, 5, 36) and got["conv1"][1].shape == (1, 1, 1, 4)
    assert_same_blobs(got, legacy)
    assert [(layer.name, layer.type, layer.v1) for layer in parse_caffemodel(path.read_bytes())] == [
        ("conv1", "Convolution", True), ("fc6", "InnerProduct", True), ("relu1", "ReLU", True)]


@pytest.mark.parametrize("legacy_v1", [False, True], ids=["current", "v1"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_writer_output_is_what_protobuf_parses(legacy_v1, packed):
    msgs = caffe_messages(packed)
    rng = np.random.default_rng(2)
    layers = {**two_layers(rng), "scale": [rng.standard_normal(3)]}
    types = {**TYPES, "scale": "Scale"} if not legacy_v1 else TYPES
    net = msgs["NetParameter"].FromString(encode_caffemodel(layers, types, legacy_v1=legacy_v1, packed=packed))
    parsed = net.layers if legacy_v1 else net.layer
    assert [layer.name for layer in parsed] == list(layers)
    for layer, (name, blobs) in zip(parsed, layers.items()):
        if legacy_v1:
            assert layer.type == V1_LAYER_TYPES.get(types.get(name, ""), 0)
        else:
            assert layer.type == types[name]
        for blob, arr in zip(layer.blobs, blobs):
            if legacy_v1:
                shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
                assert shape == (1,) * (4 - arr.ndim) + arr.shape and not blob.HasField("shape")
            else:
                assert tuple(blob.shape.dim) == arr.shape and not blob.HasField("num")
            values = np.array(blob.double_data if arr.dtype == np.float64 else blob.data, arr.dtype)
            assert values.tobytes() == arr.ravel().tobytes(), name


# --- Round trips with the module's own writer -------------------------------------------------------------
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_round_trip_current_and_v1_formats(tmp_path, packed):
    rng = np.random.default_rng(3)
    layers = {**two_layers(rng), "fc7": [rng.standard_normal((3, 5)), rng.standard_normal(3)],
              "scalar": [np.array(2.5, np.float32)], "empty": [np.zeros((0, 4), np.float32)]}
    current = tmp_path / "current.caffemodel"
    write_caffemodel(current, layers, TYPES, packed=packed)
    assert_same_blobs(read_caffemodel(current), layers)
    assert parse_caffemodel(current.read_bytes())[0].type == "Convolution"
    del layers["scalar"], layers["empty"]  # V1 blobs are 4-D; () and (0, 4) would come back as (1,1,1,1) etc.
    v1 = tmp_path / "v1.caffemodel"
    write_caffemodel(v1, layers, TYPES, legacy_v1=True, packed=packed)
    got = read_caffemodel(v1)
    assert got["fc7"][0].dtype == np.float64 and got["fc7"][0].shape == (1, 1, 3, 5)
    assert_same_blobs({k: [b.reshape(w.shape) for b, w in zip(v, layers[k])] for k, v in got.items()}, layers)
    assert v1.read_bytes() != current.read_bytes()
    with pytest.raises(ValueError, match="at most 4 axes"):
        write_caffemodel(tmp_path / "x.caffemodel", {"c": [np.zeros((1, 2, 3, 4, 5))]}, legacy_v1=True)


def test_reader_imports_no_framework_and_no_protobuf():
    code = ("import sys; import weight_converters.caffemodel, weight_converters.caffe, weight_converters.goturn; "
            "bad = {'torch', 'tensorflow', 'keras', 'google.protobuf', 'caffe'} & set(sys.modules); "
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# --- Bad files --------------------------------------------------------------------------------------------
def _blob_bytes(**fields) -> bytes:
    """A one-layer net ``conv1`` with one hand-made blob: ``fields`` = {field number: raw field bytes}."""
    from weight_converters.caffemodel import _enc_len

    blob = b"".join(fields.values())
    return _enc_len(NET_LAYER_FIELD, _enc_len(1, b"conv1") + _enc_len(7, blob))


def _shape(*dims) -> bytes:
    from weight_converters.caffemodel import _enc_len, _enc_varint

    return _enc_len(7, _enc_len(1, b"".join(_enc_varint(d) for d in dims)))


def _floats(n) -> bytes:
    from weight_converters.caffemodel import _enc_len

    return _enc_len(5, np.arange(n, dtype="<f4").tobytes())


def _truncated() -> bytes:
    raw = encode_caffemodel(two_layers(np.random.default_rng(4)))
    return raw[: len(raw) // 2]


def _v1_and_current() -> bytes:
    layers = two_layers(np.random.default_rng(5))
    return encode_caffemodel({"conv1": layers["conv1"]}) + encode_caffemodel({"fc6": layers["fc6"]}, legacy_v1=True)


def _duplicate() -> bytes:
    layers = two_layers(np.random.default_rng(6))
    return encode_caffemodel({"conv1": layers["conv1"]}) + encode_caffemodel({"conv1": layers["fc6"]})


BAD_FILES = {
    "truncated": (_truncated, "Received: a truncated or corrupt file (NetParameter layer #1 at byte"),
    "data length mismatch": (lambda: _blob_bytes(s=_shape(2, 3), d=_floats(5)),
                             "Received: layer 'conv1' blob 0: 5 data values for shape (2, 3) (6 expected)."),
    "garbage": (lambda: np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                "corrupt file"),
    "group": (lambda: b"\x0b\x0c", "Received: a protobuf group (NetParameter field 1 at byte 0, wire type 3)"),
    "negative dim": (lambda: _blob_bytes(s=_shape(-2, 3), d=_floats(6)),
                     "Received: layer 'conv1' blob 0 with a negative dimension in shape (-2, 3)."),
    "too many axes": (lambda: _blob_bytes(s=_shape(*[1] * 33), d=_floats(1)), "with 33 axes (Caffe allows 32)"),
    "huge shape": (lambda: _blob_bytes(s=_shape(2 ** 40, 2 ** 40), d=_floats(1)),
                   "1 data values for shape (1099511627776, 1099511627776) (1208925819614629174706176 expected)"),
    "shape vs legacy shape": (lambda: _blob_bytes(n=b"\x08\x02", s=_shape(3), d=_floats(3)),
                              "blob 0 with shape (3,) and a different legacy shape (num, channels, height, width) = "
                              "(2, 0, 0, 0)"),
    "ragged packed floats": (lambda: _blob_bytes(d=b"\x2a\x03abc"), "packed data of 3 bytes at byte"),
    "overlong varint": (lambda: b"\x08" + b"\xff" * 10 + b"\x01", "a varint at byte 1 longer than 64 bits"),
    "empty": (lambda: b"", "Received: an empty file."),
    "no blobs": (lambda: encode_caffemodel({"relu": []}), "Received: a net of 1 layers, none with blobs"),
    "duplicate name": (_duplicate, "Received: two layers named 'conv1' with blobs."),
    "both formats": (_v1_and_current, "both 'layer' (current) and 'layers' (V1) fields"),
    "text prototxt": (lambda: b'name: "GOTURN"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n',
                      "Received: a text file (a .prototxt"),
    "hdf5": (lambda: b"\x89HDF\r\n\x1a\n" + bytes(64), "Received: an HDF5 file (a Keras .h5?)"),
    "v0 net": (lambda: b"\x12\x04\x0a\x02\x0a\x00", "Received: a V0-format net"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_one_line_value_errors(tmp_path, case):
    write, received = BAD_FILES[case]
    path = tmp_path / "tracker.caffemodel"
    path.write_bytes(write())
    with pytest.raises(ValueError) as info:
        read_caffe_weights(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"--weights {path}: {CAFFEMODEL_FORMAT}. Received: "), msg
    assert received in msg, msg
    assert msg.rstrip().endswith(".")


def test_shape_wins_over_an_agreeing_legacy_shape_and_unset_legacy_dims_count_zero(tmp_path):
    path = tmp_path / "both.caffemodel"
    path.write_bytes(_blob_bytes(n=b"\x08\x01\x10\x01\x18\x02\x20\x03", s=_shape(2, 3), d=_floats(6)))
    assert read_caffemodel(path)["conv1"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    path.write_bytes(_blob_bytes(n=b"\x08\x02\x10\x03", d=_floats(0)))  # num 2, channels 3: (2, 3, 0, 0)
    assert read_caffemodel(path)["conv1"][0].shape == (2, 3, 0, 0)


def test_random_and_mutated_bytes_only_ever_raise_value_error():
    """Fuzz: garbage and a valid file with bytes flipped either parse or raise CaffemodelFormatError (a
    ValueError), never IndexError, a numpy error or a huge allocation."""
    from weight_converters.caffemodel import CaffemodelFormatError

    rng = np.random.default_rng(12)
    valid = encode_caffemodel(two_layers(rng), TYPES)
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(400):
        if i < 100:
            data = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        else:
            buf = bytearray(valid)
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 4))):
                buf[pos] = int(rng.integers(0, 256))
            data = bytes(buf)
        try:
            parse_caffemodel(data)
            outcomes["parsed"] += 1
        except CaffemodelFormatError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["parsed"] and outcomes["refused"], outcomes


def test_missing_file_and_npy_by_content(tmp_path):
    with pytest.raises(ValueError, match=r"Received: no such file\. Check the path\.$"):
        read_caffe_weights(tmp_path / "nope.caffemodel")
    rng = np.random.default_rng(8)
    layers = two_layers(rng)
    npy = tmp_path / "weights.npy"
    save_caffe_npy(npy, layers)
    assert_same_blobs(read_caffe_weights(npy), layers)
    # the name does not decide: an .npy named .caffemodel, and a .caffemodel named .npy, both read
    swapped = tmp_path / "weights.caffemodel"
    swapped.write_bytes(npy.read_bytes())
    assert_same_blobs(read_caffe_weights(swapped), layers)
    model_as_npy = tmp_path / "model.npy"
    write_caffemodel(model_as_npy, layers)
    assert_same_blobs(read_caffe_weights(model_as_npy), layers)
    # an unsafe .npy is still refused by the restricted unpickler, whatever the name
    evil = tmp_path / "evil.caffemodel"
    with evil.open("wb") as f:  # np.save(path) would append .npy
        np.save(f, np.array([print], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="references builtins.print"):
        read_caffe_weights(evil)


# --- GOTURN: the pair's loader and the CLI ----------------------------------------------------------------
def reference_weights(rng, dtype=np.float64) -> dict[str, dict[str, np.ndarray]]:
    """Random weights in the Keras reference's layout at the fast config, scaled like a trained net
    (std 1/sqrt(fan_in)) so a forward pass stays finite."""
    out = {}
    for layer, vars_ in expected_reference().items():
        kernel = vars_["kernel"]
        fan_in = int(np.prod(kernel[:-1]))
        out[layer] = {"kernel": (rng.standard_normal(kernel) / np.sqrt(fan_in)).astype(dtype),
                      "bias": (0.1 * rng.standard_normal(vars_["bias"])).astype(dtype)}
    return out


@pytest.mark.parametrize("legacy_v1", [False, True], ids=["current", "v1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_goturn_loader_reads_the_caffemodel_as_the_npy(tmp_path, legacy_v1, dtype):
    ref = reference_weights(np.random.default_rng(9), dtype)
    caffe = goturn_to_caffe(ref, CHW)
    assert set(caffe) == {"conv1", "conv2", "conv3", "conv4", "conv5", "conv1_p", "conv2_p", "conv3_p", "conv4_p",
                          "conv5_p", "fc6-new", "fc7-new", "fc7-newb", "fc8-shapes"}
    types = {n: "InnerProduct" if n.startswith("fc") else "Convolution" for n in caffe}
    model = tmp_path / "tracker.caffemodel"
    write_caffemodel(model, caffe, types, legacy_v1=legacy_v1)
    npy = tmp_path / "tracker.npy"
    save_caffe_npy(npy, caffe)
    from_model, report = load_goturn_weights(model, expected_reference())
    from_npy, npy_report = load_goturn_weights(npy, expected_reference())
    assert report.ok and npy_report.ok, (report.problems(), npy_report.problems())
    assert set(from_model) == set(from_npy) == set(ref)
    for layer in ref:
        for var in ("kernel", "bias"):
            a, b = from_model[layer][var], from_npy[layer][var]
            assert a.dtype == b.dtype == dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (layer, var)
            assert a.tobytes() == ref[layer][var].tobytes(), (layer, var)
    squeezed = [a for a in report.assumptions if a.startswith(LEGACY_BLOB_SQUEEZE)]
    if legacy_v1:  # fc weights (1,1,out,in) and all biases (1,1,1,out) squeezed, conv weights left 4-D
        assert len(squeezed) == 1 and "fc6-new/weight (1, 1, 512, 2048)" in squeezed[0]
        assert "conv1/bias (1, 1, 1, 96)" in squeezed[0] and "conv1/weight" not in squeezed[0]
        assert squeezed[0].count("/weight") == 4 and squeezed[0].count("/bias") == 14
    else:
        assert not squeezed and report.assumptions == npy_report.assumptions
    # the torch mapping squeezes the same way
    legacy = read_caffe_weights(model)
    expected_torch = {"fc6.weight": (FC_SHAPES["fc6"][1], FC_SHAPES["fc6"][0]), "fc6.bias": (FC_SHAPES["fc6"][1],)}
    direct, treport = goturn_caffe_to_torch({"fc6-new": legacy["fc6-new"]}, expected_torch)
    assert direct["fc6.weight"].shape == expected_torch["fc6.weight"] and not treport.shape_mismatches
    assert any(a.startswith(LEGACY_BLOB_SQUEEZE) for a in treport.assumptions) is legacy_v1


def test_legacy_blob_with_a_real_leading_axis_is_not_squeezed_away():
    """Only leading 1s are dropped: a (2, 1, out, in) fc weight is a shape mismatch, not a silent reshape."""
    rng = np.random.default_rng(10)
    caffe = caffe_convs(rng)
    n_in, n_out = FC_SHAPES["fc7"]
    caffe["fc7-new"] = [rng.standard_normal((2, 1, n_out // 2, n_in)), rng.standard_normal((1, 1, 1, n_out))]
    _, report = goturn_module.goturn_from_caffe(caffe, expected_reference())
    assert [m[0] for m in report.shape_mismatches] == ["fc7-new/weight (-> fc7/kernel)"]
    assert "fc7-new/bias (1, 1, 1, 512)" in " ".join(report.assumptions)


def test_parity_check_goturn_with_a_caffemodel(tmp_path, capsys, monkeypatch):
    from parity.cli import main

    ref = reference_weights(np.random.default_rng(11))
    path = tmp_path / "tracker.caffemodel"
    write_caffemodel(path, goturn_to_caffe(ref, CHW), legacy_v1=True)
    reads = []
    real = goturn_module.read_caffe_weights

    def spy(p, **kw):
        reads.append(real(p, **kw))
        return reads[-1]

    monkeypatch.setattr(goturn_module, "read_caffe_weights", spy)
    code = main(["check", "goturn", "--fast", "--weights", str(path), "--stages", "structure,forward_eval", "-q",
                 "--out", str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert out.strip().splitlines()[-1].startswith("PASSED goturn"), out
    assert len(reads) == 1 and reads[0]["conv1"][0].tobytes() == ref["target_conv1"]["kernel"].transpose(
        3, 2, 0, 1).tobytes()
    # how the file was read reaches the report: the V1 blobs' squeeze is an assumption there
    import json

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    info = next(st["info"] for st in report["stages"] if st["name"] == "structure")
    assert any("LEGACY_BLOB_SQUEEZE" in a or "squeeze" in a.lower() for a in info["weights_file"]["assumptions"])
    # the same file cut short: exit 2, one line naming the file
    path.write_bytes(path.read_bytes()[:-1000])
    code = main(["check", "goturn", "--fast", "--weights", str(path), "--stages", "structure", "-q",
                 "--out", str(tmp_path / "report2")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1, err
    assert f"--weights {path}: {CAFFEMODEL_FORMAT}. Received: a truncated or corrupt file" in err
