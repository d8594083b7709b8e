"""The sequence pairs through user mode (``parity.compare``: automatic alignment, no tap list), including a port
written in another style: a plain ``nn.LSTM`` whose last step is taken in the parent's forward."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

import parity
from parity.core.families import keras_var_name  # noqa: F401  (the family table loads without a framework)
from tests.families import user_ports as U
from tests.families.user_ports import text_classifier_plain
from tests.keras_dtype import keras_float64

keras = pytest.importorskip("keras")
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _float64(build):
    with keras_float64():
        return build()


def test_plain_lstm_port_passes_and_is_compared_at_the_last_step():
    from reference_keras.textclf import text_classifier

    r = parity.compare(_float64(text_classifier), text_classifier_plain())
    assert r.passed, r.findings
    taps = {t.path: t for t in r.stage("forward_eval").tensors}
    assert taps["encoder"].shape == (4, 12)  # (N, 2H): the sequence's last step, both directions


@pytest.mark.parametrize("pair", ["transformer", "encdec"])
def test_registered_ports_pass_through_user_mode(pair):
    from parity.core.spec import resolve
    from parity.pairs import registry

    spec = registry.get(pair)
    cfg = spec.config(**spec.fast_config)
    r = parity.compare(_float64(lambda: resolve(spec.reference)(**cfg)), resolve(spec.port)(**cfg))
    assert r.passed, r.findings


def _registered(pair):
    from parity.core.spec import resolve
    from parity.pairs import registry

    spec = registry.get(pair)
    cfg = spec.config(**spec.fast_config)
    return _float64(lambda: resolve(spec.reference)(**cfg)), cfg


def test_time_major_gru_port_passes_compared_in_keras_layout():
    """nn.GRU(batch_first=False) fed x.transpose(0, 1), the output read from h_n: a correct port (it FAILED with
    a batch_first finding before the alignment looked at what the module is fed)."""
    ref, cfg = _registered("textgru")
    r = parity.compare(ref, U.text_gru_time_major(**cfg))
    assert r.passed, r.findings
    taps = {t.path: t for t in r.stage("forward_eval").tensors}
    assert taps["encoder"].shape == (4, 12)
    grads = {t.path for t in r.stage("gradients").tensors}
    assert {"encoder:bias_hh_l0.grad", "encoder:bias_hh_l0_reverse.grad"} <= grads  # Keras' bias[1]


def test_time_major_gru_fed_batch_first_is_named():
    ref, cfg = _registered("textgru")
    r = parity.compare(ref, U.text_gru_batch_first_missing(**cfg))
    assert not r.passed
    assert r.findings[0].cause == "batch_first" and r.findings[0].path == "encoder"


def test_time_major_gru_port_passes_through_the_cli(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "parity", "check", "--reference",
                          "tests.families.user_ports:text_gru_reference", "--port",
                          "tests.families.user_ports:text_gru_time_major", "--no-cache", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("PASSED")


OTHER_STYLE = {"transformer": U.transformer_sdpa, "encdec": U.encoder_decoder_sequential,
               "seqconv": U.sequence_cnn_sequential, "textgru": U.text_gru_time_major}


@pytest.mark.parametrize("pair", sorted(OTHER_STYLE))
def test_other_style_port_of_each_new_pair_passes(pair):
    ref, cfg = _registered(pair)
    r = parity.compare(ref, OTHER_STYLE[pair](**cfg))
    assert r.passed, r.findings
    names = {st.name for st in r.stages}
    assert {"structure", "forward_eval", "forward_train", "gradients", "step", "isolated"} <= names
    fwd = {t.path: t for t in r.stage("forward_eval").tensors}
    iso = {t.path for t in r.stage("isolated").tensors}
    if pair == "seqconv":  # F.relu/nn.ReLU after a channels-first Conv1d: relu then (N, C, L) -> (N, L, C)
        assert fwd["conv1"].shape == (4, 32, 8) and fwd["conv2"].shape == (4, 16, 16)
        assert {"conv1", "conv2"} <= iso
    elif pair == "transformer":  # forward(self, x) for MultiHeadAttention()(x, x): fed once in isolation
        assert "attention" in iso and "attention" in fwd
    elif pair == "encdec":
        assert fwd["up1"].shape == (4, 8, 16, 16) and "up1" in iso


def test_channels_first_conv_with_fused_relu_is_compared_channels_last():
    from parity.backends.torch_side import apply_transform, input_transform

    torch = pytest.importorskip("torch")
    x = torch.tensor([[[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]]])  # (N, C, L) = (1, 2, 3)
    y = apply_transform("relu|channels_last", x)
    assert y.shape == (1, 3, 2) and y.tolist() == [[[0.0, 4.0], [2.0, 0.0], [3.0, 6.0]]]
    assert input_transform("relu|channels_last") is not None and input_transform("relu") is None


@pytest.mark.parametrize("pair,port", [("seqconv", "sequence_cnn_sequential"), ("encdec", "encoder_decoder_sequential"),
                                       ("transformer", "transformer_sdpa")])
def test_other_style_ports_pass_through_the_cli(pair, port, tmp_path):
    import subprocess
    import sys

    from parity.pairs import registry

    out = subprocess.run([sys.executable, "-m", "parity", "check", "--reference", registry.get(pair).reference,
                          "--port", f"tests.families.user_ports:{port}", "--no-cache", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("PASSED")


def test_transposed_conv_cropped_in_the_parents_forward_is_compared_on_the_same_window():
    """A plain ConvTranspose2d(k=3, s=2) whose full (17, 17) output the parent crops to (16, 16): a correct
    'same' port (it FAILED with conv_transpose_same and a shape mismatch before)."""
    ref, cfg = _registered("encdec")
    r = parity.compare(ref, U.encoder_decoder_parent_crop(**cfg))
    assert r.passed, r.findings
    fwd = {t.path: t for t in r.stage("forward_eval").tensors}
    iso = {t.path: t for t in r.stage("isolated").tensors}
    assert fwd["up1"].shape == (4, 8, 16, 16) and iso["up1"].passed
    assert {"up1:weight.grad", "up1:bias.grad"} <= {t.path for t in r.stage("gradients").tensors}


def test_causal_pad_with_f_pad_in_the_parents_forward_passes_and_a_symmetric_one_is_named():
    """F.pad(x, (4, 0)) before a padding-0 Conv1d is Keras' causal padding (it FAILED with causal_padding and an
    isolated-stage shape error before); F.pad(x, (2, 2)) is found at conv1 and named causal_padding."""
    ref, cfg = _registered("seqconv")
    r = parity.compare(ref, U.sequence_cnn_functional_pad(**cfg))
    assert r.passed, r.findings
    iso = {t.path: t for t in r.stage("isolated").tensors}
    assert iso["conv1"].passed and iso["conv1"].shape == (4, 32, 8)
    ref, cfg = _registered("seqconv")
    bad = parity.compare(ref, U.sequence_cnn_symmetric_pad(**cfg))
    assert not bad.passed
    f = bad.findings[0]
    assert (f.cause, f.path) == ("causal_padding", "conv1") and "pads 2 on both sides" in f.message
