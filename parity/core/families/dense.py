"""Dense / tabular layers: Dense, Dropout, Activation and the activation layers with a parameter (LeakyReLU's
slope, PReLU's per-channel alpha). Dense's kernel layout lives in ``weight_converters/keras.py``; PReLU's in
``weight_converters/dense.py``."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit, close

KERAS_LEAKY_RELU_SLOPE = 0.3
"""keras.layers.LeakyReLU(negative_slope=0.3) default (keras/src/layers/activations/leaky_relu.py); Keras 2
called it ``alpha``, same default."""
TORCH_LEAKY_RELU_SLOPE = 0.01
"""torch.nn.LeakyReLU(negative_slope=0.01) default (torch/nn/modules/activation.py): a port that keeps the
torch default is 30x off on every negative input."""
KERAS_ACTIVATION_LEAKY_RELU_SLOPE = 0.2
"""keras.activations.leaky_relu(x, negative_slope=0.2) (keras/src/activations/activations.py): the string
activation ``"leaky_relu"`` differs from the layer's 0.3."""


def _slope(info: dict):
    for k in ("negative_slope", "alpha"):
        if isinstance(info.get(k), (int, float)):
            return float(info[k])
    return None


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if ref.get("class") == "LeakyReLU" and port.get("class") == "LeakyReLU":
        ks, ts = _slope(ref), port.get("negative_slope")
        if ks is not None and ts is not None and not close(ks, ts):
            note = " (torch default)" if close(ts, TORCH_LEAKY_RELU_SLOPE) else ""
            out.append(("leaky_relu_slope", f"LeakyReLU slope {ts:g}{note} in the port, {ks:g} in the reference",
                        f"nn.LeakyReLU(negative_slope={ks:g})" + (" (Keras default)" if close(
                            ks, KERAS_LEAKY_RELU_SLOPE) else ""),
                        f"negative inputs scale by {ts:g} instead of {ks:g}"))
    if kind == "prelu" and port.get("num_parameters") is not None and ref.get("trainable_params") is not None:
        n_ref = int(ref["trainable_params"])
        if int(port["num_parameters"]) != n_ref:
            out.append(("prelu_shared_axes", f"PReLU with {port['num_parameters']} slope(s) in the port, "
                        f"{n_ref} in the reference (shared_axes {ref.get('shared_axes')})",
                        f"nn.PReLU(num_parameters={n_ref})",
                        "one slope per channel needs shared_axes over every non-channel axis in Keras"))
    return out


FAMILY = Family(
    name="dense",
    summary="Dense, Dropout, Activation, LeakyReLU, PReLU, ReLU, ELU",
    keras_classes={"Dense": "dense", "Dropout": "dropout", "Activation": "activation", "ReLU": "activation",
                   "LeakyReLU": "activation", "ELU": "activation", "PReLU": "prelu", "Softmax": "softmax",
                   "Flatten": "flatten", "Reshape": "reshape", "InputLayer": "other", "Identity": "other",
                   "GlobalAveragePooling1D": "gap", "GlobalAvgPool1D": "gap"},
    torch_classes={"Linear": "dense", "Dropout": "dropout", "ReLU": "activation", "LeakyReLU": "activation",
                   "ELU": "activation", "PReLU": "prelu", "Softmax": "softmax", "Flatten": "flatten",
                   "Identity": "other"},
    weighted=("dense", "prelu"),
    converter="weight_converters.dense",
    conventions=(
        Named("LeakyReLU default slope", f"{KERAS_LEAKY_RELU_SLOPE}", f"{TORCH_LEAKY_RELU_SLOPE}",
              "keras/src/layers/activations/leaky_relu.py; torch/nn/modules/activation.py"),
        Named("PReLU shared axes", "alpha shape = input shape with 1 on shared_axes",
              "num_parameters = C (channel axis) or 1", "keras/src/layers/activations/prelu.py"),
        Named("Dense kernel", "(in, out)", "Linear weight (out, in)", "keras/src/layers/core/dense.py"),
    ),
    keras_keys=("negative_slope", "shared_axes", "units", "rate"),
    torch_attrs=("negative_slope", "num_parameters", "in_features", "out_features"),
    rules=(_rules,),
    kinds=("prelu",),
)
