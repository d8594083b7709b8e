"""Normalisation beyond 2-D BatchNorm: LayerNormalization, GroupNormalization, and BatchNormalization on
dense / sequence inputs (torch BatchNorm1d normalises dim 1: (N, C) or (N, C, L), never Keras' (N, L, C))."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit, close

KERAS_LAYERNORM_EPSILON = 1e-3
"""keras.layers.LayerNormalization(epsilon=1e-3) (keras/src/layers/normalization/layer_normalization.py)."""
TORCH_LAYERNORM_EPSILON = 1e-5
"""torch.nn.LayerNorm(eps=1e-5) (torch/nn/modules/normalization.py)."""
KERAS_GROUPNORM_EPSILON = 1e-3
"""keras.layers.GroupNormalization(epsilon=1e-3) (keras/src/layers/normalization/group_normalization.py)."""
TORCH_GROUPNORM_EPSILON = 1e-5
"""torch.nn.GroupNorm(eps=1e-5) (torch/nn/modules/normalization.py)."""


def _eps_hit(noun: str, keps, teps, keras_default: float, torch_default: float) -> list[RuleHit]:
    if keps is None or teps is None or close(keps, teps):
        return []
    why = " (torch default)" if close(teps, torch_default) else ""
    fix = f"set eps={keps:g}" + (" (Keras default)" if close(keps, keras_default) else "")
    return [(f"{noun.lower()}_eps", f"{noun} eps {teps:g}{why} in the port, {keps:g} in the reference", fix,
             f"outputs scale by sqrt(var+{keps:g})/sqrt(var+{teps:g})")]


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind == "layernorm":
        out += _eps_hit("LayerNorm", ref.get("epsilon"), port.get("eps"), KERAS_LAYERNORM_EPSILON,
                        TORCH_LAYERNORM_EPSILON)
        shape, inp = port.get("normalized_shape"), ref.get("input_shape")
        axis = ref.get("axis")
        if shape and inp and isinstance(axis, (int, list)):
            axes = [axis] if isinstance(axis, int) else list(axis)
            want = [inp[a - 1] if a > 0 else inp[a] for a in axes]  # input_shape has no batch axis
            if list(shape) != want:
                out.append(("layernorm_axes", f"LayerNorm normalized_shape {list(shape)} in the port; the "
                            f"reference normalises axis {axis} of {inp} (size {want})",
                            f"nn.LayerNorm({want if len(want) > 1 else want[0]})",
                            "torch normalises the trailing dimensions given by normalized_shape"))
        ra = bool(ref.get("center", True) or ref.get("scale", True))
        if "elementwise_affine" in port and bool(port["elementwise_affine"]) != ra:
            out.append(("layernorm_affine", f"LayerNorm elementwise_affine={port['elementwise_affine']} in the "
                        f"port, center/scale={ref.get('center')}/{ref.get('scale')} in the reference",
                        f"elementwise_affine={ra}", ""))
    if kind == "groupnorm":
        out += _eps_hit("GroupNorm", ref.get("epsilon"), port.get("eps"), KERAS_GROUPNORM_EPSILON,
                        TORCH_GROUPNORM_EPSILON)
        if ref.get("groups") is not None and port.get("num_groups") is not None and \
                int(ref["groups"]) != int(port["num_groups"]):
            out.append(("groupnorm_groups", f"GroupNorm num_groups={port['num_groups']} in the port, groups="
                        f"{ref['groups']} in the reference", f"nn.GroupNorm({ref['groups']}, C)", ""))
    if kind == "batchnorm" and port.get("class") == "BatchNorm1d":
        inp = ref.get("input_shape")
        nf = port.get("num_features")
        if inp and len(inp) == 2 and nf is not None and inp[0] == nf and inp[1] != nf:
            out.append(("bn1d_axis", f"BatchNorm1d({nf}) normalises dim 1, the sequence length {inp[0]}; the "
                        f"reference normalises the channels ({inp[1]}) of its (N, {inp[0]}, {inp[1]}) input",
                        f"nn.BatchNorm1d({inp[1]}) on x.transpose(1, 2) (torch wants (N, C, L))",
                        "Keras BatchNormalization axis=-1 (channels last)"))
    return out


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls == "LayerNormalization" and cfg.get("rms_scaling"):
        return "LayerNormalization(rms_scaling=True) is not yet supported (torch nn.RMSNorm conversion)"
    return None


FAMILY = Family(
    name="normalization",
    summary="LayerNormalization, GroupNormalization, BatchNormalization on (N, C) and (N, L, C)",
    keras_classes={"LayerNormalization": "layernorm", "GroupNormalization": "groupnorm",
                   "BatchNormalization": "batchnorm"},
    torch_classes={"LayerNorm": "layernorm", "GroupNorm": "groupnorm", "BatchNorm1d": "batchnorm",
                   "BatchNorm2d": "batchnorm"},
    weighted=("layernorm", "groupnorm"),
    converter="weight_converters.normalization",
    conventions=(
        Named("LayerNormalization epsilon", f"{KERAS_LAYERNORM_EPSILON:g}", f"{TORCH_LAYERNORM_EPSILON:g}",
              "keras/src/layers/normalization/layer_normalization.py; torch/nn/modules/normalization.py"),
        Named("GroupNormalization epsilon", f"{KERAS_GROUPNORM_EPSILON:g}", f"{TORCH_GROUPNORM_EPSILON:g}",
              "keras/src/layers/normalization/group_normalization.py"),
        Named("normalised axes", "axis=-1 (channels last)", "LayerNorm: trailing normalized_shape; BatchNorm1d/"
              "GroupNorm: dim 1", "torch/nn/modules/normalization.py, batchnorm.py"),
    ),
    keras_keys=("epsilon", "axis", "center", "scale", "groups", "rms_scaling"),
    torch_attrs=("eps", "normalized_shape", "elementwise_affine", "num_groups", "num_channels", "num_features"),
    rules=(_rules,),
    refuse=_refuse,
    kinds=("layernorm", "groupnorm"),
)
