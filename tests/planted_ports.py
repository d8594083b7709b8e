"""Users' ports with a known bug each, built through the port's public constructor (the same way a user's
own port would be). Used by the planted-bug tests and runnable from the CLI:
``parity check minixception --port tests.planted_ports:bn_eps_1e5``.

These are the mini_XCEPTION builders of the mutation catalogue (:mod:`benchmarks.mutations`), under the short
names the tests, the README and the pytest-plugin examples use.
"""
from __future__ import annotations

from benchmarks.mutations import mx_bn_eps_1e5 as bn_eps_1e5  # torch's default eps 1e-5 where Keras used 1e-3
from benchmarks.mutations import mx_bn_momentum_keras_value as bn_momentum_keras_value  # 0.99 passed as is
from benchmarks.mutations import mx_bn_momentum_torch_default as bn_momentum_torch_default  # torch's 0.1 (== Keras 0.9)
from benchmarks.mutations import mx_conv_bias as conv_bias  # conv biases the Keras model does not have
from benchmarks.mutations import mx_softmax_output as softmax_output  # softmax before CrossEntropyLoss
from benchmarks.mutations import mx_symmetric_pool as symmetric_pool  # MaxPool2d(3, 2, padding=1), not TF 'same'

__all__ = ["assert_found_and_named", "bn_eps_1e5", "bn_momentum_keras_value", "bn_momentum_torch_default", "conv_bias", "softmax_output",
           "symmetric_pool"]


def assert_found_and_named(name: str, stages: str | None = "ci", **kw):
    """Run the catalogue's mutation ``name`` through the harness (the code the CLI runs) and assert it is
    detected at its expected stage and layer and named with its expected cause; returns the outcome."""
    from benchmarks import mutations as M

    m = next(x for x in M.CATALOGUE if x.name == name)
    o = M.run_mutation(m, stages=stages, **kw)
    assert o.error is None, o.error
    assert o.detected, f"{name}: not detected"
    assert (o.stage, o.path) == (m.stage, m.path), f"{name}: first divergence {(o.stage, o.path)}, expected {(m.stage, m.path)}"
    assert o.cause == m.cause, o.cause_message
    return o
