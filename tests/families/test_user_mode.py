"""The sequence pairs through user mode (``parity.compare``: automatic alignment, no tap list), including a port
written in another style: a plain ``nn.LSTM`` whose last step is taken in the parent's forward."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

import parity
from parity.core.families import keras_var_name  # noqa: F401  (the family table loads without a framework)
from tests.families.user_ports import text_classifier_plain
from tests.keras_dtype import keras_float64

keras = pytest.importorskip("keras")


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
