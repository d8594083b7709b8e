"""mini_XCEPTION (oarriaga/face_classification) <-> ported_torch.minixception."""
from __future__ import annotations

from parity.core.conventions import (KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, KERAS3_ADAM_EPSILON, MINIXCEPTION_L2,
                                TORCH_BN_MOMENTUM_FROM_KERAS)
from parity.pairs.registry import register
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap

MODULES = 4


def taps(config: dict) -> list[Tap]:
    t = [
        Tap("base/conv1", "base_conv1", "base.conv1", "conv2d"),
        Tap("base/bn1", "base_bn1", "base.bn1", "batchnorm"),
        Tap("base/relu1", "base_relu1", "base.relu1", "activation"),
        Tap("base/conv2", "base_conv2", "base.conv2", "conv2d"),
        Tap("base/bn2", "base_bn2", "base.bn2", "batchnorm"),
        Tap("base/relu2", "base_relu2", "base.relu2", "activation"),
    ]
    for i in range(1, MODULES + 1):
        b = f"block{i}"
        t += [
            Tap(f"{b}/residual/conv", f"{b}_residual_conv", f"{b}.residual_conv", "conv2d"),
            Tap(f"{b}/residual/bn", f"{b}_residual_bn", f"{b}.residual_bn", "batchnorm"),
            Tap(f"{b}/sepconv1", f"{b}_sepconv1", f"{b}.sepconv1", "separable_conv2d"),
            Tap(f"{b}/sepconv1/bn", f"{b}_sepconv1_bn", f"{b}.sepconv1_bn", "batchnorm"),
            Tap(f"{b}/sepconv1/relu", f"{b}_sepconv1_relu", f"{b}.sepconv1_relu", "activation"),
            Tap(f"{b}/sepconv2", f"{b}_sepconv2", f"{b}.sepconv2", "separable_conv2d"),
            Tap(f"{b}/sepconv2/bn", f"{b}_sepconv2_bn", f"{b}.sepconv2_bn", "batchnorm"),
            Tap(f"{b}/pool", f"{b}_pool", f"{b}.pool", "maxpool"),
            Tap(f"{b}/add", f"{b}_add", f"{b}.add", "add"),
        ]
    t += [
        Tap("head/conv", "head_conv", "head_conv", "conv2d"),
        Tap("head/gap", "head_gap", "head_gap", "gap"),
        # The reference's softmax is, in the port, inside F.cross_entropy: compare softmax(port output).
        Tap("predictions", "predictions", "", "softmax", port_transform="softmax"),
    ]
    return t


SPEC = register(PairSpec(
    name="minixception",
    summary="mini_XCEPTION (Arriaga et al. 2017, FER2013 emotions), Keras -> PyTorch",
    reference="reference_keras.minixception:mini_xception",
    port="ported_torch.minixception:mini_xception",
    taps=taps,
    input_shape=lambda c: tuple(c["input_shape"]),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    # Keras l2(0.01) on the two base convs (cnn.py) -> torch weight_decay 0.02 on those two weights.
    optimizer=OptimizerSpec(kind="sgd", lr=0.01, momentum=0.9, nesterov=False,
                            l2={"base_conv1": MINIXCEPTION_L2, "base_conv2": MINIXCEPTION_L2}),
    optimizers={
        # oarriaga trained with Adam(lr=1e-3); Keras 3's epsilon default is 1e-7.
        "adam": OptimizerSpec(kind="adam", lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=KERAS3_ADAM_EPSILON,
                              l2={"base_conv1": MINIXCEPTION_L2, "base_conv2": MINIXCEPTION_L2}),
        "sgd_nesterov": OptimizerSpec(kind="sgd", lr=0.01, momentum=0.9, nesterov=True,
                                      l2={"base_conv1": MINIXCEPTION_L2, "base_conv2": MINIXCEPTION_L2}),
    },
    conventions=(
        Convention("BatchNorm epsilon", f"{KERAS_BN_EPSILON} (Keras default)", f"eps={KERAS_BN_EPSILON}",
                   "keras BatchNormalization default; torch default 1e-5"),
        Convention("BatchNorm momentum", f"{KERAS_BN_MOMENTUM} (weight of old value)",
                   f"momentum={TORCH_BN_MOMENTUM_FROM_KERAS:g} (weight of new value)", "torch m = 1 - keras m"),
        Convention("padding", "'same' (TF: extra pixel bottom/right)", "Conv2dSame / MaxPool2dSame",
                   "tensorflow nn_ops 'same'"),
        Convention("softmax", "Activation('softmax') in the model", "in F.cross_entropy (logits out)",
                   "categorical_crossentropy on probabilities == cross_entropy on logits"),
        Convention("L2", f"l2({MINIXCEPTION_L2}) on base convs", f"weight_decay={2 * MINIXCEPTION_L2:g} on base convs",
                   "d/dw lam*w^2 = 2*lam*w"),
    ),
    default_config={"input_shape": (64, 64, 1), "num_classes": 7},
    fast_config={"input_shape": (64, 64, 1), "num_classes": 7},
    default_batch=8,
    published_params={"total": 58423, "trainable": 56951, "non_trainable": 1472},
))
