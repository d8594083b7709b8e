"""Activation functions whose definitions differ between Keras and torch (or between Keras 2 and Keras 3):
gelu (erf vs tanh approximation), hard_sigmoid (Keras 2 slope 0.2 vs Keras 3 / torch 1/6), swish == SiLU,
hard_swish, softplus (torch's linear threshold), elu, selu. Each definition is a numpy function, so a
diagnosis can test which one a port's output follows (:func:`which_definition`)."""
from __future__ import annotations

import math

import numpy as np

from parity.core.conventions import float32_rounded
from parity.core.families.base import Family, Named, RuleHit

KERAS_GELU_APPROXIMATE = False
"""keras.activations.gelu(x, approximate=False): the string activation ``"gelu"`` is the exact (erf) form
(keras/src/activations/activations.py); torch nn.GELU(approximate='none') agrees, 'tanh' does not."""
KERAS2_HARD_SIGMOID_SLOPE = 0.2
"""Keras 2 (tf.keras <= 2.15, keras/backend.py ``hard_sigmoid``): clip(0.2 x + 0.5, 0, 1)."""
KERAS3_HARD_SIGMOID_SLOPE = 1.0 / 6.0
"""Keras 3 (keras/src/backend/tensorflow/nn.py ``hard_sigmoid``): relu6(x + 3) / 6 == torch nn.Hardsigmoid."""
TF_GELU_INV_SQRT2 = float32_rounded(1.0 / math.sqrt(2.0))
"""Keras 3 ``gelu(approximate=False)`` on TensorFlow is ``0.5 * x * erfc(-x * cast(0.7071067811865476))``
(tensorflow/python/ops/nn_ops.py ``gelu``): the Python float goes through a float32 tensor, so a float64 model
uses 1/sqrt(2) rounded to float32 (off by 1.7e-8; outputs differ from torch's exact nn.GELU by up to ~5e-9).
A float64 port matches with the same constant (``ported_torch.transformer.KerasGELU``)."""
TORCH_SOFTPLUS_THRESHOLD = 20.0
"""torch nn.Softplus(beta=1, threshold=20) returns x itself where beta*x > 20 (torch/nn/modules/activation.py);
Keras computes log(1 + exp(x)) everywhere: they differ by log1p(exp(-x)) < 2.1e-9 there."""
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""Klambauer et al. 2017; the same constants in keras/src/activations/activations.py and torch SELU."""
ELU_ALPHA = 1.0
"""keras ELU(alpha=1.0) and torch nn.ELU(alpha=1.0) defaults."""


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


#: activation name -> the definitions in use: {label: numpy function}. The first is Keras 3's.
DEFINITIONS = {
    "gelu": {"erf (Keras 'gelu', torch approximate='none')": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
             "erf with TensorFlow's float32-rounded 1/sqrt(2) (Keras on TF in float64)":
                 lambda x: 0.5 * x * (1.0 + _erf(x * TF_GELU_INV_SQRT2)),
             "tanh approximation (torch approximate='tanh', Keras approximate=True)":
                 lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))},
    "hard_sigmoid": {"Keras 3 / torch Hardsigmoid: relu6(x + 3) / 6": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
                     "Keras 2: clip(0.2 x + 0.5, 0, 1)":
                         lambda x: np.clip(KERAS2_HARD_SIGMOID_SLOPE * x + 0.5, 0.0, 1.0)},
    "swish": {"x * sigmoid(x) (Keras swish/silu, torch SiLU)": lambda x: x * _sigmoid(x),
              "hard_swish x * relu6(x + 3) / 6": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)},
    "softplus": {"log(1 + exp(x))": lambda x: np.logaddexp(0.0, x),
                 "torch Softplus threshold 20 (x above it)":
                     lambda x: np.where(x > TORCH_SOFTPLUS_THRESHOLD, x, np.logaddexp(0.0, x))},
    "elu": {"elu alpha 1": lambda x: np.where(x > 0, x, ELU_ALPHA * np.expm1(np.minimum(x, 0)))},
    "selu": {"selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))},
}
ALIASES = {"silu": "swish", "hard_silu": "hard_swish", "gelu_approximate": "gelu"}


def which_definition(name: str, x: np.ndarray, y: np.ndarray, rtol: float = 1e-6) -> str | None:
    """The label of the definition of ``name`` that maps ``x`` to ``y`` (None: none of them does)."""
    defs = DEFINITIONS.get(ALIASES.get(name, name), {})
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or not x.size:
        return None
    scale = max(float(np.max(np.abs(y))), 1e-300)
    for label, f in defs.items():
        if float(np.max(np.abs(f(x) - y))) <= rtol * scale:
            return label
    return None


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    act = ref.get("activation")
    if act == "gelu" and port.get("approximate") not in (None, "none"):  # nn.GELU or a subclass
        out.append(("gelu_approximate", f"GELU approximate={port['approximate']!r} in the port, the exact erf "
                    "form in the reference (Keras 'gelu' has approximate=False)", "nn.GELU() (approximate='none')",
                    "differs by up to ~5e-4 around |x| ~ 2"))
    return out


def _definition_probe(kind: str, ev: dict):
    """Which definition of the reference's activation each side follows, on the port's own input."""
    act = (ev.get("ref_info") or {}).get("activation")
    ins, r, p = ev.get("port_in") or [], ev.get("ref_out"), ev.get("port_out")
    if kind != "activation" or not isinstance(act, str) or act not in DEFINITIONS and act not in ALIASES \
            or len(ins) != 1 or r is None or p is None or np.shape(ins[0]) != np.shape(p):
        return None
    x = np.asarray(ins[0], dtype=np.float64)
    if x.ndim in (4, 5):  # the port is channels-first, the reference channels-last (an image or a volume)
        x = np.moveaxis(x, 1, -1)
        p = np.moveaxis(np.asarray(p), 1, -1)
    ours = which_definition(act, x, p, rtol=1e-13)
    theirs = which_definition(act, x, r, rtol=1e-13)
    if ours and theirs and ours != theirs:
        return ("activation_definition", f"{act}: the port computes {ours}; the reference {theirs}",
                f"implement {theirs}", "both sides recomputed in numpy on the port's input")
    return None


FAMILY = Family(
    name="activations",
    summary="gelu, swish/silu, hard_sigmoid, hard_swish, softplus, elu, selu (Activation layer or fused)",
    keras_classes={},
    torch_classes={"GELU": "activation", "SiLU": "activation", "Hardsigmoid": "activation",
                   "Hardswish": "activation", "Softplus": "activation", "SELU": "activation", "Tanh": "activation",
                   "Sigmoid": "activation", "ReLU6": "activation", "Mish": "activation"},
    conventions=(
        Named("gelu", "erf (approximate=False)", "nn.GELU(approximate='none'); 'tanh' differs",
              "keras/src/activations/activations.py; torch/nn/modules/activation.py"),
        Named("gelu constant in float64", "TF: 1/sqrt(2) rounded to float32", "exact 1/sqrt(2)",
              "tensorflow/python/ops/nn_ops.py"),
        Named("hard_sigmoid", "Keras 3: relu6(x+3)/6; Keras 2: clip(0.2x+0.5, 0, 1)", "nn.Hardsigmoid = relu6(x+3)/6",
              "keras/src/backend/tensorflow/nn.py; tf-keras keras/backend.py"),
        Named("swish", "x * sigmoid(x)", "nn.SiLU", "keras/src/activations/activations.py"),
        Named("softplus", "log(1 + exp(x))", f"nn.Softplus(threshold={TORCH_SOFTPLUS_THRESHOLD:g}): linear above",
              "torch/nn/modules/activation.py"),
        Named("selu", f"alpha {SELU_ALPHA:.6f}, scale {SELU_SCALE:.6f}", "nn.SELU (same constants)",
              "Klambauer et al. 2017"),
    ),
    keras_keys=("activation",),
    torch_attrs=("approximate", "threshold", "beta"),
    rules=(_rules,),
    probes=(_definition_probe,),
)
