"""``--reference FILE.h5`` for a Keras 2-era full-model file: what ``model.save("m.h5")`` wrote in Keras 2.0.x
(trained models of that era, e.g. a mini-Xception emotion classifier), written here with h5py in the layout of
keras-team/keras 2.0.5 ``keras/models.py`` ``save_model`` and ``keras/engine/topology.py``
``Container.get_config``: bytes root attributes ``keras_version``/``backend``, a ``model_config`` JSON with
``batch_input_shape``, nested-list ``inbound_nodes`` and Keras 2 initializer/regularizer configs, a
``training_config`` JSON (``optimizer_config`` with ``lr`` and ``decay``), ``model_weights`` whose
``weight_names`` are ``layer/var:0`` and an ``optimizer_weights`` group. The check must run with the file's own
weights and report the file's training configuration; a Lambda layer is refused without being run."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import base64
import json
import marshal

import h5py
import numpy as np
import pytest

from parity.cli import main
from parity.optim.user import SAVED_TRAINING_CONFIG
from parity.user.pair import reference_from_file
from parity.user.saved_model import is_keras2_file, keras3_model_config

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

H, W, C, F1, F2, CLASSES = 8, 8, 1, 4, 6, 3
L2 = 0.009999999776482582  # l2(0.01) as Keras 2 saved it (a float32 read back as a double)


def _init(cls, **config):
    return {"class_name": cls, "config": config}


GLOROT = _init("VarianceScaling", scale=1.0, mode="fan_avg", distribution="uniform", seed=None)


def _layer(name, cls, inbound, **config):
    return {"name": name, "class_name": cls, "config": {"name": name, "trainable": True, **config},
            "inbound_nodes": [[[inbound, 0, 0, {}]]] if inbound else []}


def keras2_layers() -> list[dict]:
    """The Keras 2.0.5 config of input -> Conv2D -> BatchNormalization -> Activation -> SeparableConv2D ->
    GlobalAveragePooling2D -> Dense(softmax), layer by layer (auto names, as Keras 2 gave them)."""
    conv = dict(strides=[1, 1], data_format="channels_last", dilation_rate=[1, 1], activation="linear",
                use_bias=False, bias_initializer=_init("Zeros"), bias_regularizer=None, activity_regularizer=None,
                bias_constraint=None)
    inp = {"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [],
           "config": {"batch_input_shape": [None, H, W, C], "dtype": "float32", "sparse": False, "name": "input_1"}}
    return [
        inp,
        _layer("conv2d_1", "Conv2D", "input_1", filters=F1, kernel_size=[3, 3], padding="valid",
               kernel_initializer=GLOROT, kernel_regularizer=_init("L1L2", l1=0.0, l2=L2), kernel_constraint=None,
               **conv),
        _layer("batch_normalization_1", "BatchNormalization", "conv2d_1", axis=-1, momentum=0.99, epsilon=0.001,
               center=True, scale=True, beta_initializer=_init("Zeros"), gamma_initializer=_init("Ones"),
               moving_mean_initializer=_init("Zeros"), moving_variance_initializer=_init("Ones"),
               beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None),
        _layer("activation_1", "Activation", "batch_normalization_1", activation="relu"),
        _layer("separable_conv2d_1", "SeparableConv2D", "activation_1", filters=F2, kernel_size=[3, 3],
               padding="same", depth_multiplier=1, depthwise_initializer=GLOROT, pointwise_initializer=GLOROT,
               depthwise_regularizer=None, pointwise_regularizer=None, depthwise_constraint=None,
               pointwise_constraint=None, **conv),
        _layer("global_average_pooling2d_1", "GlobalAveragePooling2D", "separable_conv2d_1",
               data_format="channels_last"),
        _layer("predictions", "Dense", "global_average_pooling2d_1", units=CLASSES, activation="softmax",
               use_bias=True, kernel_initializer=GLOROT, bias_initializer=_init("Zeros"), kernel_regularizer=None,
               bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None),
    ]


def trained_weights(seed: int = 7) -> dict[str, dict[str, np.ndarray]]:
    """Float32 arrays far from any initialiser (a port that kept its own values could not pass)."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(0.0, 0.5, s).astype(np.float32)  # noqa: E731
    return {"conv2d_1": {"kernel": f(3, 3, C, F1)},
            "batch_normalization_1": {"gamma": rng.uniform(0.5, 1.5, F1).astype(np.float32), "beta": f(F1),
                                      "moving_mean": f(F1),
                                      "moving_variance": rng.uniform(0.5, 2.0, F1).astype(np.float32)},
            "separable_conv2d_1": {"depthwise_kernel": f(3, 3, F1, 1), "pointwise_kernel": f(1, 1, F1, F2)},
            "predictions": {"kernel": f(F2, CLASSES), "bias": f(CLASSES)}}


ADAM_KERAS2 = {"class_name": "Adam", "config": {"lr": 0.0010000000474974513, "beta_1": 0.8999999761581421,
                                                "beta_2": 0.9990000128746033, "epsilon": 1e-08, "decay": 0.0}}


def write_keras2_model_h5(path, layers=None, weights=None, model_config=None, optimizer=None):
    """A Keras 2.0.5 ``model.save(path)`` file, written with h5py."""
    layers = layers if layers is not None else keras2_layers()
    weights = weights if weights is not None else trained_weights()
    model_config = model_config or {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers, "input_layers": [["input_1", 0, 0]],
        "output_layers": [[layers[-1]["name"], 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.0.5"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        f.attrs["training_config"] = json.dumps({
            "optimizer_config": optimizer or ADAM_KERAS2, "loss": "categorical_crossentropy", "metrics": ["accuracy"],
            "sample_weight_mode": None, "loss_weights": None}).encode("utf8")
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [ly["name"].encode("utf8") for ly in layers]
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = b"2.0.5"
        for ly in layers:
            g = mw.create_group(ly["name"])
            vars_ = weights.get(ly["name"], {})
            g.attrs["weight_names"] = [f"{ly['name']}/{v}:0".encode("utf8") for v in vars_]
            for v, a in vars_.items():
                g.create_dataset(f"{ly['name']}/{v}:0", data=a)
        opt = f.create_group("optimizer_weights")  # Adam's state as Keras 2 kept it (not loaded)
        opt.attrs["weight_names"] = [b"Adam/iterations:0"]
        opt.create_dataset("Adam/iterations:0", data=np.int64(120))
    return path


# --- the port (a torch module written the way people write them) -----------------------------------------------
class MiniPort(torch.nn.Module if torch else object):
    """Conv -> BN -> ReLU -> depthwise + pointwise -> global average -> linear (logits)."""

    def __init__(self):
        super().__init__()
        from torch import nn

        self.stem = nn.Conv2d(C, F1, 3, bias=False)
        self.bn = nn.BatchNorm2d(F1, eps=1e-3, momentum=0.01)
        self.dw = nn.Conv2d(F1, F1, 3, padding=1, groups=F1, bias=False)
        self.pw = nn.Conv2d(F1, F2, 1, bias=False)
        self.fc = nn.Linear(F2, CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.pw(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_port():
    return MiniPort()


PORT = f"{__name__}:build_port"


@pytest.fixture
def keras2_file(tmp_path):
    return write_keras2_model_h5(tmp_path / "fer2013_mini_XCEPTION.102-0.66.hdf5")


def test_keras2_full_model_loads_with_the_files_weights_and_training_config(keras2_file):
    assert is_keras2_file(str(keras2_file))
    model = reference_from_file(str(keras2_file))()
    want = trained_weights()
    assert [ly.__class__.__name__ for ly in model.layers] == [
        "InputLayer", "Conv2D", "BatchNormalization", "Activation", "SeparableConv2D", "GlobalAveragePooling2D",
        "Dense"]
    for layer, vars_ in want.items():
        got = {w.name: w.numpy() for w in model.get_layer(layer).weights}
        for v, a in vars_.items():
            assert np.array_equal(got[v], a.astype(got[v].dtype)), (layer, v)
    assert model.get_layer("conv2d_1").kernel_regularizer.get_config()["l2"] == pytest.approx(0.01)
    opt, loss = getattr(model, SAVED_TRAINING_CONFIG)
    assert opt["class_name"] == "Adam" and loss == "categorical_crossentropy"
    assert opt["config"]["learning_rate"] == pytest.approx(1e-3) and "lr" not in opt["config"]
    assert opt["config"]["epsilon"] == 1e-08 and "decay" not in opt["config"]


def test_cli_check_of_a_keras2_file_passes_and_reports_its_training_config(keras2_file, tmp_path, capsys):
    rc = main(["check", "--reference", str(keras2_file), "--port", PORT, "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert rc == 0 and lines[-1].startswith("PASSED"), lines[-8:]
    saved = (tmp_path / "r").rglob("*.json")
    text = out + "".join(p.read_text() for p in saved)
    assert "Adam(" in text and "learning_rate=0.001" in text and "epsilon=1e-08" in text, out[-2000:]


def test_a_file_whose_weights_do_not_fit_its_config_is_refused(tmp_path, capsys):
    """The same file with the separable conv's pointwise kernel of another shape: refused as bad input (the
    file's weights do not fit its own config), not silently replaced by initial values."""
    w = trained_weights()
    w["separable_conv2d_1"]["pointwise_kernel"] = np.zeros((1, 1, F1, F2 + 1), np.float32)
    path = write_keras2_model_h5(tmp_path / "bad.h5", weights=w)
    rc = main(["check", "--reference", str(path), "--port", PORT, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"parity: error: --reference {path}: expected"), err[-3:]


def test_keras2_sequential_list_config_is_rewritten(tmp_path):
    """Keras 2.0.x saved a Sequential's config as the bare list of layers (the first holding
    ``batch_input_shape``); Keras 3 refuses that form as it is."""
    layers = keras2_layers()[1:]
    layers[0]["config"]["batch_input_shape"] = [None, H, W, C]
    seq = {"class_name": "Sequential", "config": [{"class_name": ly["class_name"], "config": ly["config"]}
                                                  for ly in layers]}
    fixed, done = keras3_model_config(seq)
    assert seq["config"][0]["class_name"] == "Conv2D"  # the input is left as it was
    assert isinstance(fixed["config"], dict) and len(fixed["config"]["layers"]) == len(layers) + 1, done
    assert fixed["config"]["layers"][0]["config"]["batch_shape"] == [None, H, W, C]
    assert "batch_input_shape" not in fixed["config"]["layers"][1]["config"]
    path = write_keras2_model_h5(tmp_path / "seq.h5", layers=layers, model_config=seq)
    model = reference_from_file(str(path))()
    assert model.input_shape == (None, H, W, C)
    kern = model.get_layer("predictions").kernel.numpy()
    assert np.array_equal(kern, trained_weights()["predictions"]["kernel"].astype(kern.dtype))


def test_keras2_merge_padding_pooling_and_depthwise_layers_load(tmp_path):
    """More Keras 2.x layer configs as the era wrote them: ZeroPadding2D, Conv2D(activation, bias), LeakyReLU
    (``alpha``), MaxPooling2D, DepthwiseConv2D, an Add of two inbound tensors, Flatten, Dropout."""
    conv = dict(strides=[1, 1], data_format="channels_last", dilation_rate=[1, 1], use_bias=True,
                kernel_initializer=GLOROT, bias_initializer=_init("Zeros"), kernel_regularizer=None,
                bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None)
    dense = {k: v for k, v in conv.items() if k not in ("strides", "data_format", "dilation_rate")}
    inp = {"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [], "config": {
        "batch_input_shape": [None, 8, 8, 3], "dtype": "float32", "sparse": False, "name": "input_1"}}
    add = _layer("add_1", "Add", "depthwise_conv2d_1")
    add["inbound_nodes"] = [[["depthwise_conv2d_1", 0, 0, {}], ["max_pooling2d_1", 0, 0, {}]]]
    layers = [inp,
              _layer("zero_padding2d_1", "ZeroPadding2D", "input_1", padding=[[1, 1], [1, 1]],
                     data_format="channels_last"),
              _layer("conv2d_1", "Conv2D", "zero_padding2d_1", filters=3, kernel_size=[3, 3], padding="valid",
                     activation="relu", **conv),
              _layer("leaky_re_lu_1", "LeakyReLU", "conv2d_1", alpha=0.3),
              _layer("max_pooling2d_1", "MaxPooling2D", "leaky_re_lu_1", pool_size=[2, 2], padding="same",
                     strides=[2, 2], data_format="channels_last"),
              _layer("depthwise_conv2d_1", "DepthwiseConv2D", "max_pooling2d_1", kernel_size=[3, 3],
                     strides=[1, 1], padding="same", data_format="channels_last", activation="linear",
                     use_bias=False, bias_initializer=_init("Zeros"), bias_regularizer=None,
                     activity_regularizer=None, bias_constraint=None, depth_multiplier=1,
                     depthwise_initializer=GLOROT, depthwise_regularizer=None, depthwise_constraint=None),
              add, _layer("flatten_1", "Flatten", "add_1"),
              _layer("dropout_1", "Dropout", "flatten_1", rate=0.5, noise_shape=None, seed=None),
              _layer("dense_1", "Dense", "dropout_1", units=2, activation="softmax", **dense)]
    rng = np.random.default_rng(1)
    weights = {"conv2d_1": {"kernel": rng.normal(size=(3, 3, 3, 3)), "bias": rng.normal(size=3)},
               "depthwise_conv2d_1": {"depthwise_kernel": rng.normal(size=(3, 3, 3, 1))},
               "dense_1": {"kernel": rng.normal(size=(48, 2)), "bias": rng.normal(size=2)}}
    weights = {k: {v: a.astype(np.float32) for v, a in d.items()} for k, d in weights.items()}
    model = reference_from_file(str(write_keras2_model_h5(tmp_path / "k2.h5", layers=layers, weights=weights)))()
    assert [ly.name for ly in model.layers] == [ly["name"] for ly in layers]
    assert model.get_layer("leaky_re_lu_1").get_config()["negative_slope"] == pytest.approx(0.3)
    keras3_name = {"depthwise_kernel": "kernel"}  # Keras 3 DepthwiseConv2D calls its kernel "kernel"
    for layer, vars_ in weights.items():
        got = {w.name: w.numpy() for w in model.get_layer(layer).weights}
        for v, a in vars_.items():
            g = got[keras3_name.get(v, v) if layer.startswith("depthwise") else v]
            assert np.array_equal(g, a.astype(g.dtype)), (layer, v)


def test_a_keras2_lambda_layer_is_refused_without_running_it(tmp_path, capsys):
    ran = tmp_path / "ran"
    code = compile(f"open({str(ran)!r}, 'w').write('x')", "<lambda>", "eval")
    layers = keras2_layers()
    lam = _layer("lambda_1", "Lambda", "activation_1", function=[base64.b64encode(marshal.dumps(code)).decode(),
                                                                 None, None],
                 function_type="lambda", output_shape=None, output_shape_type="raw", arguments={})
    layers[4]["inbound_nodes"] = [[["lambda_1", 0, 0, {}]]]
    path = write_keras2_model_h5(tmp_path / "lam.h5", layers=layers[:4] + [lam] + layers[4:])
    rc = main(["check", "--reference", str(path), "--port", PORT, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"parity: error: --reference {path}: expected a model saved by Keras"), err
    assert "Lambda" in err[-1] and not ran.exists()


def port_adam(module):
    """The port's own training step: torch Adam with the file's hyper-parameters as a user would copy them."""
    return torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def port_loss(output, target):
    return torch.nn.functional.cross_entropy(output, target)


def test_the_files_training_config_is_what_the_ports_own_step_is_compared_with(keras2_file, tmp_path, capsys):
    """The file's Adam and its conv2d_1 l2(0.01) regulariser train the reference; a port optimizer without the
    matching weight decay is named as the cause, on that layer."""
    rc = main(["check", "--reference", str(keras2_file), "--port", PORT, "--port-optimizer", f"{__name__}:port_adam",
               "--port-loss", f"{__name__}:port_loss", "--out", str(tmp_path / "r")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and lines[-1].startswith("FAILED: first divergence at step conv2d_1"), lines[-3:]
    assert "weight decay missing: Keras l2(0.01) on conv2d_1" in lines[-1], lines[-1]


def test_a_keras2_decay_leaves_the_reference_uncompiled_and_says_why(tmp_path, capsys):
    """Adam(decay=1e-6) (a per-iteration lr schedule Keras 3's optimizers do not have): the model is still a
    reference for every stage with parity's own training step; its settings say why the file's is unused."""
    adam = {"class_name": "Adam", "config": dict(ADAM_KERAS2["config"], decay=1e-06)}
    path = write_keras2_model_h5(tmp_path / "decayed.h5", optimizer=adam)
    rc = main(["check", "--reference", str(path), "--port", PORT, "--stages", "structure,forward_eval",
               "--out", str(tmp_path / "r")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and lines[-1].startswith("PASSED"), lines[-3:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    conv = {c["name"]: c["reference"] for c in report["stages"][0]["info"]["conventions"]}
    assert "not usable" in conv["training configuration"] and "decay=1e-06" in conv["training configuration"]


def port_adam_l2(module):
    """The correct port of the file's training: torch Adam with the hyper-parameters as typed (0.9, 0.999,
    1e-8) and coupled weight decay 2 * 0.01 on the l2-regularised conv only."""
    stem = [module.stem.weight]
    rest = [p for n, p in module.named_parameters() if n != "stem.weight"]
    return torch.optim.Adam([{"params": stem, "weight_decay": 2 * 0.01}, {"params": rest}], lr=1e-3,
                            betas=(0.9, 0.999), eps=1e-8)


def test_the_correct_port_of_a_keras2_files_training_passes(keras2_file, tmp_path, capsys):
    """The file stores the float32 images of the betas (0.8999999761581421, 0.9990000128746033), which Keras 3
    uses as they are; a port typing 0.9 / 0.999 is the same setting and must not fail (it did, by 6.7e-6
    relative in Adam's second moment, before the reference's own betas were used for the port's step)."""
    rc = main(["check", "--reference", str(keras2_file), "--port", PORT, "--port-optimizer",
               f"{__name__}:port_adam_l2", "--port-loss", f"{__name__}:port_loss", "--out", str(tmp_path / "r")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and lines[-1].startswith("PASSED"), lines[-3:]
