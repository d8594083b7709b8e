"""Reading a ``--weights`` file with the pair's loader (pure numpy, ``weight_converters``) and the layer maps the
converters follow. Any problem with the file is a :class:`parity.core.errors.UsageError` (one line)."""
from __future__ import annotations

import os

from parity.core.errors import UsageError
from parity.core.spec import PairSpec, Tap, resolve
from weight_converters.keras import LayerMap
from weight_converters.h5 import load_keras_weights


def layer_maps(taps: list[Tap]):
    return [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in taps if t.weighted]


def load_weight_file(spec: PairSpec, path: str, expected):
    """Read ``--weights`` with the pair's loader; any problem is a :class:`UsageError` (one line)."""
    if not os.path.exists(path):
        raise UsageError(f"--weights {path}: expected an existing file. Received: no such file. Check the path.")
    loader = resolve(spec.weights_loader) if spec.weights_loader is not None else load_keras_weights
    try:
        weights, report = loader(path, expected)
    except ValueError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(msg if msg.startswith("--weights") else f"--weights {path}: {msg}") from None
    if not report.ok:
        probs = report.problems()
        raise UsageError(f"--weights {path}: expected weights matching the reference model. Received: "
                         f"{'; '.join(probs[:3])}{' (+%d more)' % (len(probs) - 3) if len(probs) > 3 else ''}. "
                         "Pass the weights of this pair's model (or check the pair/config).")
    return weights, report
