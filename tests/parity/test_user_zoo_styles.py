"""More ports in other people's styles (benchmarks.user_zoo, second half of ZOO): correct ports that parity
failed before (false alarms), each now PASSING, and the matching planted bug still found and named.

- a Dense after a flatten the port writes in Keras' own channels-last order (``x.permute(0, 2, 3, 1).reshape``)
  behind a functional ``torch.relu``: the flatten-order probe saw through no elementwise op and assumed CHW;
- a tabular Conv1D model (Reshape -> Conv1D -> MaxPooling1D -> Flatten -> Dense) ported channels-first: a 1-D
  flatten's Dense rows were never reordered (L, C) -> (C, L);
- the published mini_XCEPTION at 64x64 with ``nn.MaxPool2d(3, 2, ceil_mode=True)`` on the even sizes, or a
  timm-style ``MaxPool2dSame`` subclass padding in its own forward: judged by the constructor's ``padding`` (0),
  flagged as symmetric pooling although the module computes TF 'same' exactly."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

from benchmarks import user_zoo
from parity.user.align import align
from parity.user.pair import compare

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")


def _tap(al, ref):
    return next(t for t in al.taps if t.ref == ref)


def test_a_channels_last_flatten_behind_a_functional_relu_keeps_the_dense_rows(float64):
    al = align(user_zoo.keras_conv_head(), user_zoo.port_conv_head_hwc_flatten())
    assert _tap(al, "out").flatten_chw is None
    assert _tap(align(user_zoo.keras_conv_head(), user_zoo.port_conv_head()), "out").flatten_chw == (8, 5, 5)


def test_a_channels_first_1d_flatten_reorders_the_dense_rows(float64):
    al = align(user_zoo.keras_tabular_conv1d(), user_zoo.port_tabular_conv1d())
    assert _tap(al, "fc").flatten_chw == (4, 5)  # Keras (L, C) = (5, 4) flattened L-major; torch C-major


@pytest.mark.parametrize("ref_fn, port_fn", [("keras_conv_head", "port_conv_head_hwc_flatten"),
                                             ("keras_tabular_conv1d", "port_tabular_conv1d"),
                                             ("keras_mlp", "port_mlp")])
def test_flatten_order_ports_pass(float64, ref_fn, port_fn):
    result = compare(getattr(user_zoo, ref_fn)(), getattr(user_zoo, port_fn)(), seed=1)
    assert result.passed, result.summary_line()


def test_a_planted_bug_behind_the_channels_last_flatten_is_still_found(float64):
    """sigmoid where the reference has relu, in the same functional position the probe looks through."""
    port = user_zoo.port_conv_head_hwc_flatten()
    port.conv_b.register_forward_hook(lambda m, i, o: torch.sigmoid(o) - torch.relu(o))  # relu(.) -> sigmoid(.)
    result = compare(user_zoo.keras_conv_head(), port, stages="structure,forward_eval")
    assert not result.passed
    assert result.first_divergence.path.startswith("conv_b"), result.summary_line()


def test_the_tabular_port_with_a_leaky_relu_is_found_at_the_layer_reading_it(float64):
    import torch.nn.functional as F

    port = user_zoo.port_tabular_conv1d()
    # leaky_relu where the reference has relu, in the functional position the flatten-order probe looks through
    port.forward = lambda x: port.head(F.max_pool1d(F.leaky_relu(port.conv(x.unsqueeze(1)), 0.1), 2).flatten(1))
    result = compare(user_zoo.keras_tabular_conv1d(), port, stages="structure,forward_eval")
    assert not result.passed
    assert result.first_divergence.path == "fc", result.summary_line()  # conv's tap is relu(conv): equal


@pytest.mark.parametrize("size, kw, same", [
    (60, dict(ceil_mode=True), True),            # even: TF pads (0, 1); ceil_mode's last window is that pad
    (60, dict(padding=1), False),                # the classic port: pads (1, 1), every window shifted
    (15, dict(padding=1), True),                 # odd: TF pads (1, 1)
    (15, dict(ceil_mode=True), False),           # odd: 7 outputs, TF has 8
    (8, dict(padding=1, ceil_mode=True), False),
])
def test_the_pool_probe_judges_by_what_the_module_computes(size, kw, same):
    from parity.backends.torch_probe import computes_tf_same

    ref = {"padding": "same", "input_shape": [size, size, 2], "pool_size": [3, 3], "strides": [2, 2]}
    assert computes_tf_same(torch.nn.MaxPool2d(3, 2, **kw), ref) is same
    assert computes_tf_same(torch.nn.MaxPool2d(3, 2, **kw), dict(ref, padding="valid")) is False


def test_the_conv_probe_sees_a_conv_subclass_padding_in_its_forward():
    import torch.nn.functional as F
    from parity.backends.torch_probe import computes_tf_same

    class Conv2dSame(torch.nn.Conv2d):  # pads bottom/right in forward, as timm's does
        def forward(self, x):
            return super().forward(F.pad(x, (0, 1, 0, 1)))

    ref = {"padding": "same", "input_shape": [8, 8, 3], "kernel_size": [3, 3], "strides": [2, 2]}
    assert computes_tf_same(Conv2dSame(3, 4, 3, 2).double(), ref)
    assert not computes_tf_same(torch.nn.Conv2d(3, 4, 3, 2, padding=1).double(), ref)


@pytest.mark.parametrize("port_fn", ["port_face_ceil_mode", "port_face_timm_same"])
def test_mini_xception_64_with_tf_same_pools_in_other_styles_passes(float64, port_fn):
    result = compare(user_zoo.keras_face_mini_xception(), getattr(user_zoo, port_fn)(),
                     stages="structure,forward_eval,forward_train", batch=2)
    assert result.passed, result.summary_line()


def test_mini_xception_64_with_symmetric_pools_is_still_named(float64):
    """The classic port: nn.MaxPool2d(3, 2, padding=1) on 60x60 (TF pads (0, 1)): found at block1_pool."""
    port = user_zoo.port_face_ceil_mode()
    for block in port.blocks:
        block.body[-1] = torch.nn.MaxPool2d(3, 2, padding=1)
    result = compare(user_zoo.keras_face_mini_xception(), port, stages="structure,forward_eval", batch=2)
    assert not result.passed
    first = result.causes()[0]
    assert (first.cause, first.path) == ("symmetric_pool", "block1_pool"), result.summary_line()


def test_a_volume_padded_before_its_stride2_conv_passes_and_a_symmetric_pad_is_named(float64):
    """``F.pad(x, (0, 1) * 3)`` in the parent's forward before a stride-2 Conv3d is TF 'same' on (8, 16, 16): the
    module is fed that pad in isolation (it was: shape mismatch at isolated conv2); ``(1, 1) * 3`` is not."""
    import torch.nn.functional as F

    result = compare(user_zoo.keras_volume(), user_zoo.port_volume_functional())
    assert result.passed, result.summary_line()
    port = user_zoo.port_volume_functional()
    port.forward = lambda x: port.fc(F.relu(port.conv2(F.pad(F.relu(port.conv1(x)), (1, 1) * 3))).mean(dim=(2, 3, 4)))
    result = compare(user_zoo.keras_volume(), port, stages="structure,forward_eval")
    assert not result.passed
    first = result.causes()[0]
    assert first.path == "conv2" and "padding" in first.cause, (first.cause, result.summary_line())


def test_an_image_padded_before_its_stride2_conv_passes(float64):
    import torch.nn.functional as F

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(inp)
    km = keras.Model(inp, keras.layers.Dense(2, name="fc")(keras.layers.GlobalAveragePooling2D(name="gap")(x)))

    class Port(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.fc = torch.nn.Conv2d(3, 4, 3, 2), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.down(F.pad(x, (0, 1, 0, 1))).mean((2, 3)))

    assert _tap(align(km, Port()), "down").port_transform == "prepad[0,1,0,1]"
    result = compare(km, Port())
    assert result.passed, result.summary_line()


def test_a_port_returning_probabilities_like_the_reference_passes(float64):
    """F.softmax at the end of the port's forward, as the reference's last layer: trained with Keras' loss on
    probabilities (was: FAILED at gradients loss, 'double softmax'); with the user's own CrossEntropyLoss
    (--port-loss) the double softmax is still named."""
    result = compare(user_zoo.keras_mlp(), user_zoo.port_mlp_probabilities())
    assert result.passed, result.summary_line()
    km = user_zoo.keras_mlp()
    km.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    result = compare(km, user_zoo.port_mlp_probabilities(), stages="structure,forward_eval,gradients",
                     port_loss=torch.nn.CrossEntropyLoss())
    assert not result.passed
    assert result.causes()[0].cause == "double_softmax", result.summary_line()
