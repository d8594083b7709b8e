"""Structural facts about a torch module that a parameter list cannot show (torch only; the harness's
structure stage calls these).

- :func:`find_shared_modules` (:func:`counting_calls` + :func:`shared_modules`): modules with parameters that
  run more than once in one forward. The classic case is Xception's middle flow built as
  ``nn.ModuleList([MiddleBlock()] * 8)`` (or one block called in a loop): eight blocks' worth of computation
  with one block of parameters. The reference has eight distinct blocks, so the parameter count drops and,
  after a weight copy, seven blocks compute with the wrong weights.
- :func:`param_counts`: trainable parameters, BN statistics and ``num_batches_tracked`` counted apart, so
  that they add up to Keras' ``count_params()`` (trainable + non-trainable moving statistics).
"""
from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch import nn

#: torch-only BatchNorm bookkeeping (one int64 scalar per BN); Keras has no counterpart.
NUM_BATCHES_TRACKED = "num_batches_tracked"


def _aliases(module: nn.Module) -> dict[int, list[str]]:
    """Every dotted path under which each submodule is registered (a shared module has several)."""
    paths: dict[int, list[str]] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        paths.setdefault(id(sub), []).append(path)
    return paths


def _noun(sub: nn.Module) -> str:
    return "block" if any(True for _ in sub.children()) else "layer"


@contextlib.contextmanager
def counting_calls(module: nn.Module):
    """Count, while the block runs, how often each submodule of ``module`` is called (a hook on each, removed
    after); yields the ``Counter`` keyed by ``id(submodule)`` that :func:`shared_modules` reads. The harness
    counts during the forward it runs anyway, so finding shared modules costs no forward of its own."""
    calls: Counter[int] = Counter()
    # nn.Module's own method: a module that forwards its hooks elsewhere (parity.user.view's CallAlias counts the
    # calls its hooks see) is counted by its own calls and left undisturbed
    handles = [nn.Module.register_forward_hook(sub, lambda m, i, o, k=id(sub): calls.update((k,)))
               for _, sub in module.named_modules()]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def find_shared_modules(module: nn.Module, example_input) -> list[dict]:
    """Run one forward (``torch.no_grad``, module state restored) counting the calls of every submodule; return
    :func:`shared_modules` of those counts. ``example_input``: a tensor or a tuple of positional inputs."""
    was_training = module.training
    saved = {k: v.clone() for k, v in module.state_dict().items()}  # BN statistics survive a train forward
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.no_grad(), counting_calls(module) as calls:
            module(*inputs)
    finally:
        module.load_state_dict(saved)
        module.train(was_training)
    return shared_modules(module, calls)


def shared_modules(module: nn.Module, calls: Counter) -> list[dict]:
    """One entry per module that owns parameters and was called more than once (``calls``: from
    :func:`counting_calls` over one forward)::

        {"path": "middle.0", "calls": 8, "params": 1587..., "aliases": ["middle.0", ..., "middle.7"],
         "note": "module `middle.0` called 8x in one forward (shared weights: 8 blocks' worth of
                  computation with 1 block of parameters)"}

    A shared module's submodules are called as often as it is: they are not listed again (only the
    outermost shared module is reported). Modules reused without parameters (one ``nn.ReLU`` called twice) are
    harmless and not reported.
    """
    mods = {}
    for path, sub in module.named_modules():  # each module once, under its first path
        mods[id(sub)] = (path, sub)
    aliases = _aliases(module)
    found: list[dict] = []
    for key, (path, sub) in mods.items():  # named_modules order: parents before children
        n = calls[key]
        if n < 2:
            continue
        params = sum(p.numel() for p in sub.parameters())
        if not params:
            continue
        if any(path.startswith(f["path"] + ".") and n == f["calls"] for f in found):
            continue  # called once per call of an already-reported shared parent
        noun = _noun(sub)
        found.append({
            "path": path, "calls": n, "params": params, "aliases": aliases.get(key, [path]),
            "note": (f"module `{path}` called {n}x in one forward (shared weights: {n} {noun}s' worth of "
                     f"computation with 1 {noun} of parameters)"),
        })
    return found


def param_counts(module: nn.Module) -> dict[str, int]:
    """Counts comparable with Keras (parameters shared between paths are counted once, like ``parameters()``):

    - ``trainable``: parameters with ``requires_grad`` (Keras ``trainable_weights``);
    - ``frozen``: parameters without it (Keras non-trainable *weights*, e.g. a frozen layer);
    - ``buffers``: floating buffers (BN ``running_mean`` / ``running_var``: Keras' moving statistics);
    - ``num_batches_tracked``: how many of those torch-only BN counters there are (not in Keras' count);
    - ``non_trainable`` = frozen + buffers and ``total`` = trainable + non_trainable: Keras'
      ``count_params()`` split.
    """
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = tracked = 0
    for name, b in module.named_buffers():  # shared buffers once
        if name.rsplit(".", 1)[-1] == NUM_BATCHES_TRACKED:
            tracked += 1
        elif b.is_floating_point():
            buffers += b.numel()
    return {"trainable": trainable, "frozen": frozen, "buffers": buffers, "num_batches_tracked": tracked,
            "non_trainable": frozen + buffers, "total": trainable + frozen + buffers}
