"""Users' ports with a known bug each, built through the port's public constructor (the same way a user's
own port would be). Used by the planted-bug tests and runnable from the CLI:
``parity check minixception --port tests.planted_ports:bn_eps_1e5``."""
from __future__ import annotations

from ported_torch.minixception import mini_xception


def bn_eps_1e5(**cfg):
    """torch's default BatchNorm eps 1e-5 where Keras used 1e-3."""
    return mini_xception(**cfg, bn_eps=1e-5)


def bn_momentum_keras_value(**cfg):
    """Keras' momentum 0.99 passed to torch as is (torch weighs the *new* batch by it)."""
    return mini_xception(**cfg, bn_momentum=0.99)


def bn_momentum_torch_default(**cfg):
    """torch's default momentum 0.1 (== Keras 0.9) where Keras used 0.99."""
    return mini_xception(**cfg, bn_momentum=0.1)


def symmetric_pool(**cfg):
    """nn.MaxPool2d(3, 2, padding=1) where TF 'same' pads bottom/right only."""
    return mini_xception(**cfg, symmetric_pool=True)


def softmax_output(**cfg):
    """The model ends in softmax and is trained with CrossEntropyLoss (softmax twice)."""
    return mini_xception(**cfg, softmax_output=True)


def conv_bias(**cfg):
    """Convolutions with a bias the Keras model does not have."""
    return mini_xception(**cfg, conv_bias=True)
