"""Recurrent layers: SimpleRNN, LSTM, GRU, Bidirectional <-> nn.RNN, nn.LSTM, nn.GRU (``batch_first``,
``bidirectional``). Weight layouts and gate orders: ``weight_converters/recurrent.py``."""
from __future__ import annotations

import numpy as np

from parity.core.families.base import Family, Named, RuleHit
from parity.core.families.embedding import MASK_ZERO_AS_PACKING

KERAS_GRU_GATES = "z, r, h"
"""keras/src/layers/rnn/gru.py ``GRUCell.call``: update z, reset r, candidate h, in that kernel order."""
TORCH_GRU_GATES = "r, z, n"
"""torch/nn/modules/rnn.py ``GRU``: weight_ih_l[k] = (W_ir | W_iz | W_in)."""
LSTM_GATES = "i, f, c(g), o"
"""Keras ``LSTMCell.call`` (z0..z3) and torch ``weight_ih_l[k]`` (W_ii | W_if | W_ig | W_io) agree."""
KERAS_RECURRENT_ACTIVATION = "sigmoid"
"""Keras 3 LSTM/GRU recurrent_activation default (keras/src/layers/rnn/lstm.py, gru.py); torch's is fixed."""
KERAS2_RECURRENT_ACTIVATION = "hard_sigmoid"
"""Keras 2.0-2.2 LSTM/GRU default (keras-team/keras 2.2 ``recurrent.py``): no torch nn.LSTM/GRU equivalent."""
KERAS_GRU_RESET_AFTER = True
"""Keras 3 (and tf.keras 2.x) GRU default; Keras <= 2.2 had False, which torch nn.GRU cannot express."""
KERAS_GO_BACKWARDS = ("Keras RNN(go_backwards=True) reads the sequence from its end and returns its outputs in the "
                      "order it computed them (step 0 = after reading x[L-1]); it does not flip them back (only "
                      "Bidirectional flips its backward half): torch rnn(x.flip(1)), the output as it is")
"""keras/src/layers/rnn/rnn.py ``RNN.call`` -> ``backend.rnn(..., go_backwards=True)``; keras/src/layers/rnn/
bidirectional.py flips ``y_rev`` back for the backward half only."""
KERAS_MERGE_MODE = "concat"
"""keras.layers.Bidirectional(merge_mode='concat') default: [forward, backward] on the last axis, the same
order as torch's bidirectional output."""
ONE_BIAS = ("Keras one bias b; torch bias_ih + bias_hh: convert as (b, 0) and keep bias_hh out of training "
            "(requires_grad=False), or the effective bias b_ih + b_hh moves twice per step")
GRU_BIAS_HH_TRAINED = ("Keras GRU(reset_after=True) has two trained biases, bias (2, 3H): bias[0] is torch's bias_ih, "
                       "bias[1] (inside the reset gate's product) torch's bias_hh; both train (keras/src/layers/rnn/"
                       "gru.py GRUCell.build: one bias variable of shape (2, 3 * units), trainable)")
RNN_KINDS = ("lstm", "gru", "rnn")


def _keras_info(cls: str, cfg: dict) -> dict:
    """Bidirectional: the inner layer's config under the outer keys, plus ``bidirectional`` / ``merge_mode``."""
    if cls != "Bidirectional":
        return {"bidirectional": False} if cls in ("LSTM", "GRU", "SimpleRNN") else {}
    inner = (cfg.get("layer") or {}).get("config", {})
    info = {k: inner[k] for k in ("units", "return_sequences", "return_state", "go_backwards", "reset_after",
                                  "recurrent_activation", "activation", "use_bias") if k in inner}
    info.update(bidirectional=True, merge_mode=cfg.get("merge_mode"),
                inner_class=(cfg.get("layer") or {}).get("class_name"))
    return info


def _torch_info(m) -> dict:
    if not hasattr(m, "weight_ih_l0"):
        return {}
    info = {"bidirectional": bool(getattr(m, "bidirectional", False)), "mode": getattr(m, "mode", None)}
    for d in ("", "_reverse"):
        hh = getattr(m, f"bias_hh_l0{d}", None)
        if hh is not None and info["mode"] != "GRU":  # Keras has one bias: bias_hh is torch's alone
            info["bias_hh_trainable"] = bool(hh.requires_grad) or info.get("bias_hh_trainable", False)
            info["torch_only_params"] = info.get("torch_only_params", 0) + int(hh.numel())
    return info


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind not in RNN_KINDS:
        return out
    if ref.get("units") is not None and port.get("hidden_size") is not None and \
            int(ref["units"]) != int(port["hidden_size"]):
        out.append(("rnn_units", f"hidden_size {port['hidden_size']} in the port, units {ref['units']} in the "
                    "reference", f"hidden_size={ref['units']}", ""))
    if "bidirectional" in ref and "bidirectional" in port and bool(ref["bidirectional"]) != bool(port["bidirectional"]):
        out.append(("bidirectional", f"bidirectional={port['bidirectional']} in the port, "
                    f"{'Bidirectional' if ref['bidirectional'] else 'one direction'} in the reference",
                    f"bidirectional={bool(ref['bidirectional'])}", ""))
    if port.get("batch_first") is False and not port.get("fed_time_major"):
        out.append(("batch_first", "batch_first=False in the port: it reads (L, N, C) where Keras gives (N, L, C)",
                    "nn.%s(..., batch_first=True)" % {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[kind],
                    "batch and time axes swapped"))
    if kind in ("lstm", "rnn") and port.get("bias_hh_trainable"):
        out.append(("rnn_two_biases", "torch trains bias_ih and bias_hh where Keras has one bias: the effective "
                    "bias moves twice per optimizer step", "after loading, bias_hh_l0(.._reverse)"
                    ".requires_grad_(False) (it holds 0)", ONE_BIAS))
    if ref.get("merge_mode") not in (None, KERAS_MERGE_MODE) and port.get("bidirectional"):
        out.append(("merge_mode", f"Bidirectional merge_mode={ref['merge_mode']!r} in the reference; torch "
                    "concatenates [forward, backward]", f"combine the two halves with {ref['merge_mode']}", ""))
    return out


#: torch's gate names per kind, in torch's order (the names a gate-order finding uses)
TORCH_GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}
#: the same gates under their Keras names, in torch's order (Keras' own order: i,f,c,o and z,r,h)
KERAS_GATE_NAMES = {"lstm": ("i", "f", "c", "o"), "gru": ("r", "z", "h"), "rnn": ("h",)}
PROBE_RTOL = 1e-6


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= PROBE_RTOL * max(float(np.max(np.abs(b))), 1e-300)))


def _block_perm(kind: str, want: np.ndarray, got: np.ndarray) -> list[int] | None:
    """``p`` with got block i == want block p[i] (gate blocks along axis 0), or None."""
    g = len(TORCH_GATE_NAMES[kind])
    if g < 2 or want.shape != got.shape or want.shape[0] % g:
        return None
    wb, gb = np.split(want, g), np.split(got, g)
    perm = []
    for blk in gb:
        j = next((j for j, w in enumerate(wb) if j not in perm and _same(blk, w)), None)
        if j is None:
            return None
        perm.append(j)
    return perm


def _weights_probe(kind: str, ev: dict):
    if kind not in RNN_KINDS or not ev.get("want") or not ev.get("got"):
        return None
    want, got = ev["want"], ev["got"]
    for key, w in want.items():
        a = got.get(key)
        if a is None or np.shape(a) != np.shape(w) or _same(a, w):
            continue
        if key.startswith("bias_hh"):
            ih = want.get(key.replace("bias_hh", "bias_ih"))
            if ih is not None and not np.any(w) and _same(a, ih):
                return ("rnn_bias_duplicated", f"the Keras bias was copied into both bias_ih and bias_hh ({key}): "
                        "torch adds the two, so the effective bias is doubled",
                        "bias_ih = keras bias, bias_hh = 0 (weight_converters/recurrent.py)", ONE_BIAS)
        if key.startswith("bias_ih") and not np.any(a):
            return ("rnn_bias_dropped", f"{key} is 0 in the port: the Keras bias was not transferred",
                    "bias_ih = keras bias, bias_hh = 0", f"converted bias max |b| {float(np.max(np.abs(w))):.3g}")
        if kind == "gru" and key.startswith("bias_"):
            other = "bias_hh" + key[len("bias_ih"):] if key.startswith("bias_ih") else "bias_ih" + key[len("bias_hh"):]
            if other in want and _same(a, want[other]):
                return ("gru_bias_swapped", f"{key} holds the other GRU bias: Keras' bias[0] is the input bias "
                        "(bias_ih), bias[1] the recurrent one (bias_hh, inside the reset gate's product)",
                        "bias_ih = bias[0], bias_hh = bias[1] (gates reordered)", "")
        if kind == "lstm" and key.startswith(("bias_ih", "bias_hh")):
            h = np.shape(w)[0] // 4
            delta = np.asarray(a, dtype=np.float64) - np.asarray(w, dtype=np.float64)
            if _same(delta[:h], np.zeros(h)) and _same(delta[2 * h:], np.zeros(2 * h)) and \
                    np.allclose(delta[h:2 * h], delta[h], rtol=1e-9, atol=0) and abs(delta[h]) > 0:
                return ("rnn_forget_bias", f"{key}: the forget-gate bias is shifted by {delta[h]:+g}, the other "
                        "gates match: a forget_bias added at conversion (TF 1 LSTMCell adds forget_bias=1.0 at run "
                        "time; Keras unit_forget_bias=True only initialises it, the stored bias already holds it)",
                        "copy the Keras bias as is", "")
        perm = _block_perm(kind, np.asarray(w), np.asarray(a))
        if perm is not None and perm != sorted(perm):
            names = KERAS_GATE_NAMES[kind]
            held = ",".join(names[j] for j in perm)
            keras_order = {"lstm": "i,f,c,o", "gru": "z,r,h"}.get(kind, "")
            note = " (Keras' own order, copied unconverted)" if held == keras_order else ""
            return ("rnn_gate_order", f"{key}: gate blocks in the order {held}{note}; torch nn.{kind.upper()} "
                    f"expects {','.join(TORCH_GATE_NAMES[kind])} (Keras {','.join(names)})",
                    "reorder the gate blocks with weight_converters.recurrent (GRU: swap z and r)",
                    f"each {np.shape(w)[0] // len(names)}-row block equals a converted block exactly")
    return None


def _last_step_probe(kind: str, ev: dict):
    """Keras' Bidirectional(return_sequences=False) = [forward's last step, backward's last step = torch's step
    0]: a port that takes both halves at step -1 matches on the first half only."""
    r, p = ev.get("ref_out"), ev.get("port_out")
    if kind not in RNN_KINDS or r is None or p is None or np.ndim(r) != 2 or np.shape(r) != np.shape(p):
        return None
    h = np.shape(r)[1] // 2
    if h and _same(p[:, :h], r[:, :h]) and not _same(p[:, h:], r[:, h:]):
        return ("rnn_last_step", "the backward half of the Bidirectional output differs while the forward half "
                "matches: the port takes the backward direction at the last step, Keras returns its final state, "
                "which is step 0 of torch's output", "torch.cat([out[:, -1, :H], out[:, 0, H:]], -1) (or h_n)",
                "forward half equal, backward half not")
    return None


def _post_padded_rows(tokens) -> np.ndarray | None:
    """Which rows of a (N, L) batch of token ids end in 0s; None unless every row's 0s are a tail (the
    post-padded inputs of a mask_zero=True model, POST_PADDED_TOKENS in parity.core.families.embedding)."""
    t = np.asarray(tokens)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer):
        return None
    zero = t == 0
    tail = np.flip(np.cumprod(np.flip(zero, 1), axis=1), 1).astype(bool)  # the trailing run of 0s
    return zero.any(axis=1) if np.array_equal(zero, tail) else None


def _mask_probe(kind: str, ev: dict):
    """Keras' Embedding(mask_zero=True) makes the RNN skip the padding: a port that steps over it (no packing,
    padding_idx alone, lengths packed as if pre-padded) agrees on every unpadded row and on no padded one."""
    r, p, tokens = ev.get("ref_out"), ev.get("port_out"), ev.get("tokens")
    if not ev.get("ref_mask_zero", True):  # the reference masks nothing (unknown: judged by the inputs alone)
        return None
    if kind not in RNN_KINDS or r is None or p is None or tokens is None or np.shape(r) != np.shape(p):
        return None
    padded = _post_padded_rows(tokens)
    if padded is None or len(padded) != np.shape(r)[0] or padded.all() or not padded.any():
        return None
    same = np.array([_same(a, b) for a, b in zip(np.asarray(r), np.asarray(p))])
    if same[~padded].all() and not same[padded].any():
        return ("mask_zero_ignored", f"the {kind.upper()} output agrees on the {int((~padded).sum())} unpadded "
                f"row(s) and on none of the {int(padded.sum())} padded one(s): Keras' Embedding(mask_zero=True) "
                "makes it skip the 0 steps, the port steps over them (no packing, padding_idx alone, or lengths "
                "applied as if the inputs were pre-padded)",
                "pack_padded_sequence(emb, (tokens != 0).sum(1).cpu(), batch_first=True, enforce_sorted=False) "
                "on the post-padded ids, and h_n for the last step", MASK_ZERO_AS_PACKING)
    return None


KERAS_LSTM_STATES = ("Keras LSTM(return_state=True) returns [output, h, c] and a decoder takes "
                     "initial_state=[h, c]; torch nn.LSTM returns (output, (h_n, c_n)) and takes (h_0, c_0)")
"""keras/src/layers/rnn/lstm.py (``return_state``; the states list is [h, c]), keras/src/layers/rnn/rnn.py
(``initial_state``); torch/nn/modules/rnn.py (LSTM ``hx = (h_0, c_0)``)."""


def _initial_state_probe(kind: str, ev: dict):
    """A seq2seq decoder whose state the port does not take from the encoder: called without a state while the
    reference has a return_state=True encoder, or with (c, h) for (h, c) (an LSTM's h = o * tanh(c), so
    |h| <= |tanh(c)| everywhere; a swapped pair breaks it)."""
    call = ev.get("call")
    if kind != "lstm" or call is None or ev.get("stage") not in ("forward_eval", "isolated", "forward_train"):
        return None
    args, kwargs = call
    state = args[1] if len(args) > 1 else kwargs.get("hx")
    if state is None:
        if ev.get("ref_return_state"):
            return ("rnn_initial_state", "the nn.LSTM is called without an initial state while the reference "
                    "feeds it the [h, c] of an LSTM(return_state=True) (initial_state=): the port starts from 0",
                    "_, (h, c) = encoder(x); decoder(y, (h, c))", KERAS_LSTM_STATES)
        return None
    if isinstance(state, (tuple, list)) and len(state) == 2:
        h, c = (np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype=np.float64) for t in state)
        if h.shape == c.shape and h.size and np.any(np.abs(h) > np.abs(np.tanh(c)) + 1e-12):
            return ("rnn_initial_state", "the nn.LSTM's initial state is passed as (c, h): its first element is not "
                    "bounded by tanh of its second as an LSTM's h = o * tanh(c) is (Keras' states are [h, c], "
                    "torch's (h_0, c_0))", "decoder(y, (h, c)) with _, (h, c) = encoder(x)", KERAS_LSTM_STATES)
    return None


def _gru_bias_hh_probe(kind: str, ev: dict):
    """A GRU's ``bias_hh`` that gets no gradient in the port (frozen like an LSTM's, or read detached) where Keras
    trains ``bias[1]``: seen only in the gradients (the forward is exact)."""
    if kind != "gru" or ev.get("stage") != "gradients" or not str(ev.get("tensor") or "").endswith(".grad"):
        return None
    params = ev.get("params") or {}
    reached = any(st.get("grad") for k, st in params.items() if not k.startswith("bias_hh"))
    for key, st in params.items():
        if not key.startswith("bias_hh"):
            continue
        if not st.get("requires_grad"):
            how = "frozen (requires_grad=False), as an LSTM's torch-only bias_hh is"
        elif reached and not st.get("grad"):
            how = "read detached: no gradient reaches it while the layer's other parameters get theirs"
        else:
            continue
        return ("gru_bias_hh_frozen", f"GRU {key} is {how}; Keras' GRU (reset_after=True) trains its recurrent "
                "bias bias[1], which is torch's bias_hh", "keep bias_hh trainable and in the graph (bias_hh = "
                "bias[1], gates z,r swapped); only an LSTM's or SimpleRNN's bias_hh is frozen", GRU_BIAS_HH_TRAINED)
    return None


def _go_backwards_probe(kind: str, ev: dict):
    """A ``go_backwards`` layer that is exact in isolation (fed the reversed sequence) but not in the port's
    forward: the port reads the sequence from its start; or its sequence output is Keras' flipped in time: the
    port flipped the outputs back."""
    info = ev.get("ref_info") or {}
    if kind not in RNN_KINDS or not info.get("go_backwards") or info.get("bidirectional"):
        return None
    r, p = ev.get("ref_out"), ev.get("port_out")
    if r is not None and p is not None and np.ndim(r) == 3 and np.shape(r) == np.shape(p) and \
            _same(np.asarray(p)[:, ::-1], r) and not _same(p, r):
        return ("go_backwards", "the port's sequence output is the reference's reversed in time: the port flips a "
                "go_backwards layer's outputs back, Keras returns them in the order it computed them (step 0 = "
                "after reading the last input step)", "return rnn(x.flip(1))[0] as it is (no second flip)",
                KERAS_GO_BACKWARDS)
    if ev.get("isolated_ok") and ev.get("stage") in ("forward_eval", "forward_train"):
        return ("go_backwards", "go_backwards=True in the reference: the port's module is exact when fed the "
                "reversed sequence (isolated stage) but not in the port's forward, which feeds it the sequence "
                "from its start", "feed the module x.flip(1) (time axis)", KERAS_GO_BACKWARDS)
    return None


def _keras_kind(cls: str, cfg: dict) -> str | None:
    if cls == "Bidirectional":
        return {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}.get((cfg.get("layer") or {}).get("class_name"))
    return None


def _refuse(cls: str, cfg: dict) -> str | None:
    info = dict(cfg)
    inner_cls = cls
    if cls == "Bidirectional":
        info = (cfg.get("layer") or {}).get("config", {})
        inner_cls = (cfg.get("layer") or {}).get("class_name", "?")
        if inner_cls not in ("LSTM", "GRU", "SimpleRNN"):
            return f"Bidirectional({inner_cls}) is not yet supported"
    if inner_cls not in ("LSTM", "GRU", "SimpleRNN"):
        return None
    ra = info.get("recurrent_activation")
    if inner_cls != "SimpleRNN" and isinstance(ra, str) and ra != KERAS_RECURRENT_ACTIVATION:
        return (f"{inner_cls}(recurrent_activation={ra!r}) is not yet supported: torch nn.{inner_cls} gates use "
                "sigmoid (Keras 2's hard_sigmoid default has no torch equivalent)")
    act = info.get("activation")
    if isinstance(act, str) and act != "tanh" and not (inner_cls == "SimpleRNN" and act == "relu"):
        return f"{inner_cls}(activation={act!r}) is not yet supported: torch uses tanh"
    if inner_cls == "GRU" and info.get("reset_after") is False:
        return ("GRU(reset_after=False) is not yet supported: torch nn.GRU applies the reset gate after the "
                "recurrent matmul (Keras reset_after=True)")
    if info.get("go_backwards") and cls == "Bidirectional":
        return f"Bidirectional({inner_cls}(go_backwards=True)) is not yet supported"
    if info.get("stateful") or (info.get("return_state") and (cls == "Bidirectional" or inner_cls != "LSTM")):
        what = f"Bidirectional({inner_cls})" if cls == "Bidirectional" else inner_cls
        return (f"{what} with return_state/stateful is not yet supported (only a plain LSTM's return_state=True, "
                "whose [h, c] start a decoder): the layer returns several tensors (or keeps state between "
                "batches); check the model with return_state=False (its first output)")
    if info.get("use_bias") is False:
        return f"{inner_cls}(use_bias=False) is not yet supported"
    return None


FAMILY = Family(
    name="recurrent",
    summary="SimpleRNN, LSTM, GRU (reset_after=True), Bidirectional (concat), return_sequences or last step, "
            "go_backwards (one direction)",
    keras_classes={"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn", "Bidirectional": "rnn"},
    torch_classes={"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"},
    weighted=RNN_KINDS,
    converter="weight_converters.recurrent",
    conventions=(
        Named("GRU gate order", KERAS_GRU_GATES, TORCH_GRU_GATES, "keras/src/layers/rnn/gru.py; torch/nn/modules/rnn.py"),
        Named("LSTM gate order", LSTM_GATES, LSTM_GATES, "keras/src/layers/rnn/lstm.py; torch/nn/modules/rnn.py"),
        Named("biases", "one bias (LSTM, SimpleRNN); GRU reset_after: (2, 3H)", "bias_ih + bias_hh", ONE_BIAS),
        Named("GRU bias_hh", "bias[1], trained", "bias_hh, trained (compared as bias[1])", GRU_BIAS_HH_TRAINED),
        Named("GRU reset_after", "True (Keras 3), False (Keras <= 2.2)", "always 'after'", "keras/src/layers/rnn/gru.py"),
        Named("recurrent activation", "sigmoid (Keras 3), hard_sigmoid (Keras 2)", "sigmoid (fixed)",
              "keras/src/layers/rnn/lstm.py"),
        Named("layout", "(N, L, C)", "batch_first=True for (N, L, C); default (L, N, C)", "torch/nn/modules/rnn.py"),
        Named("last step vs sequence", "return_sequences=False: the last step (backward half: step 0)",
              "output[:, -1, :H] and output[:, 0, H:] (or h_n)", "keras/src/layers/rnn/bidirectional.py"),
        Named("go_backwards", "reads x from its end; outputs in computed order (not flipped back)",
              "rnn(x.flip(1)), output as is", "keras/src/layers/rnn/rnn.py; keras/src/layers/rnn/bidirectional.py"),
        Named("merge mode", f"{KERAS_MERGE_MODE!r} default (sum, mul, ave, None)", "concat [fwd, bwd]",
              "keras/src/layers/rnn/bidirectional.py"),
    ),
    keras_keys=("units", "return_sequences", "return_state", "go_backwards", "reset_after", "recurrent_activation",
                "merge_mode"),
    torch_attrs=("hidden_size", "input_size", "batch_first", "num_layers", "bias"),
    keras_info=_keras_info,
    keras_kind=_keras_kind,
    torch_info=_torch_info,
    rules=(_rules,),
    refuse=_refuse,
    probes=(_mask_probe, _initial_state_probe, _weights_probe, _last_step_probe, _gru_bias_hh_probe, _go_backwards_probe),
    kinds=RNN_KINDS,
)
