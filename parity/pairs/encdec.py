"""A small image encoder-decoder (Conv2DTranspose, UpSampling2D, skip concatenation) <-> ported_torch.encdec."""
from __future__ import annotations

from parity.core.families.upsampling import CONV_TRANSPOSE_SAME
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.pairs.registry import register


def taps(config: dict) -> list[Tap]:
    t = []
    for name in ("enc1", "enc2", "bottleneck"):
        t.append(Tap(name, name, name, "conv2d"))
        if name == "enc1":
            t.append(Tap("pool1", "pool1", "pool1", "maxpool"))
        if name == "enc2":
            t.append(Tap("pool2", "pool2", "pool2", "maxpool"))
    t += [
        Tap("up2", "up2", "up2", "upsample"),
        Tap("skip2", "skip2", "skip2", "concat"),
        Tap("dec2", "dec2", "dec2", "conv2d"),
        Tap("up1", "up1", "up1", "conv2d_transpose"),
        Tap("skip1", "skip1", "skip1", "concat"),
        Tap("dec1", "dec1", "dec1", "conv2d"),
        Tap("gap", "gap", "gap", "gap"),
        Tap("classifier", "classifier", "classifier", "dense"),
        Tap("predictions", "predictions", "", "softmax", port_transform="softmax"),
    ]
    return t


SPEC = register(PairSpec(
    name="encdec",
    summary="image encoder-decoder (U-Net, 2 levels): Conv2DTranspose, UpSampling2D, skip concatenations",
    reference="reference_keras.encdec:encoder_decoder",
    port="ported_torch.encdec:encoder_decoder",
    taps=taps,
    input_shape=lambda c: tuple(c["input_shape"]),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=0.05, momentum=0.9),
    optimizers={"adam": OptimizerSpec(kind="adam", lr=1e-3)},
    conventions=(
        Convention("transposed conv 'same'", "out = in * s, crop (k - s) // 2 first",
                   "ConvTranspose2dSame (crop by hand; k=3, s=2 has no padding/output_padding)", CONV_TRANSPOSE_SAME),
        Convention("transposed kernel", "(kh, kw, out, in)", "(in, out, kh, kw)", "weight_converters/transposed.py"),
        Convention("up-sampling", "UpSampling2D nearest", "nn.Upsample(scale_factor=2, mode='nearest')", ""),
        Convention("skip concatenation", "Concatenate() on channels last", "torch.cat(dim=1), same order", ""),
    ),
    default_config={"input_shape": (16, 16, 3), "width": 8, "num_classes": 3},
    fast_config={"input_shape": (16, 16, 3), "width": 8, "num_classes": 3},
    # this pair's own definition (no external publication): Keras model.count_params() of the default config
    published_params={"total": 10683, "trainable": 10683, "non_trainable": 0},
    default_batch=4,
))
