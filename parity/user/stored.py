"""A user pair's view of its port (:class:`parity.user.pair.UserTaps`: the module groups and aliases the alignment
found, the reference's inputs packed into one array, its outputs) as plain data, so that ``parity record`` of your
own models stores it in the trace and ``parity replay --port MOD:FN`` sees the port exactly as the live check saw
it, without TensorFlow (the alignment itself needs the Keras model).

The data names module paths, layouts and widths, never code: replay resolves each path in the module that
``--port`` builds (a path the port does not have is one clear line, exit 2), and every field is checked as data
on the way in (a trace is untrusted input)."""
from __future__ import annotations

import re
from typing import Any, Callable

from parity.core.errors import UsageError
from parity.user.inputs import LAYOUT_AS_IS, LAYOUT_IMAGE, LAYOUT_SEQ_CHANNELS_FIRST, LAYOUT_VOLUME, InputSlot
from parity.user.outputs import OutputHead
from parity.user.pair import UserTaps, _is_torch_module

#: the layouts an input slot may name (:mod:`parity.user.inputs`)
_LAYOUTS = (LAYOUT_AS_IS, LAYOUT_IMAGE, LAYOUT_SEQ_CHANNELS_FIRST, LAYOUT_VOLUME)
#: the alias kinds :func:`parity.user.view.port_view` builds
_ALIASES = ("call", "padded", "roles")
#: a module path or a view name: dotted words, with the alignment's marks (``/``, ``+``, ``#``, ``@``)
_PATH = re.compile(r"[\w.#@/+\-]{0,300}")
#: bounds on what a trace may ask for (far above any model's)
_MAX_ENTRIES = 4096


def view_to_data(taps) -> dict[str, Any] | None:
    """The view's data, or None when the port is seen as it is (nothing to store)."""
    if not (taps.groups or taps.aliases or taps.heads or len(taps.slots) > 1 or (
            taps.slots and taps.slots[0].layout == LAYOUT_SEQ_CHANNELS_FIRST)):
        return None
    return {
        "groups": {k: list(v) for k, v in taps.groups.items()},
        "aliases": {k: [how, path, (dict(arg) if isinstance(arg, dict) else list(arg)
                                    if isinstance(arg, (tuple, list)) else arg)]
                    for k, (how, path, arg) in taps.aliases.items()},
        "slots": [{"name": s.name, "shape": list(s.shape), "start": s.start, "integer_range": s.integer_range,
                   "layout": s.layout} for s in taps.slots],
        "heads": [{"key": h.key, "layer": h.layer, "width": h.width, "softmax": h.softmax} for h in taps.heads],
    }


def _bad(where: str, what: str, got) -> UsageError:
    return UsageError(f"{where}: expected the recorded port view's {what}. Received: {str(got)[:80]!r}. Record "
                      "the trace again with `parity record --reference MOD:FN --port MOD:FN`.")


def _is_int(v, lo=0, hi=1 << 31) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _path(v) -> bool:
    return isinstance(v, str) and bool(_PATH.fullmatch(v))


def _alias(where: str, name, entry) -> tuple:
    if not (_path(name) and isinstance(entry, list) and len(entry) == 3 and entry[0] in _ALIASES
            and _path(entry[1])):
        raise _bad(where, "aliases as name -> [call|padded|roles, module path, argument]", entry)
    how, path, arg = entry
    if how == "call" and _is_int(arg, 1, _MAX_ENTRIES):
        return how, path, arg
    if how == "padded" and isinstance(arg, list) and len(arg) <= 8 and all(_is_int(a, 0, 1 << 16) for a in arg):
        return how, path, tuple(arg)
    if how == "roles" and isinstance(arg, dict) and len(arg) <= 8 and all(
            _path(k) and _path(v) for k, v in arg.items()):
        return how, path, dict(arg)
    raise _bad(where, f"{how} alias argument", arg)


def view_from_data(data, where: str):
    """(groups, aliases, slots, heads) from :func:`view_to_data`'s data, every field checked."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in
                                             (("groups", dict), ("aliases", dict), ("slots", list), ("heads", list))):
        raise _bad(where, "groups, aliases, slots and heads", data)
    if max(len(data[k]) for k in ("groups", "aliases", "slots", "heads")) > _MAX_ENTRIES:
        raise _bad(where, f"entries (at most {_MAX_ENTRIES} of each)", {k: len(data[k]) for k in data})
    groups = {}
    for name, members in data["groups"].items():
        if not (_path(name) and isinstance(members, list) and 2 <= len(members) <= 8 and all(map(_path, members))):
            raise _bad(where, "groups as name -> 2-8 module paths", members)
        groups[name] = tuple(members)
    aliases = {name: _alias(where, name, entry) for name, entry in data["aliases"].items()}
    slots, start = [], 0
    for s in data["slots"]:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and len(s["name"]) <= 200
                and isinstance(s.get("shape"), list) and 1 <= len(s["shape"]) <= 8
                and all(_is_int(d, 1, 1 << 24) for d in s["shape"]) and s.get("start") == start
                and (s.get("integer_range") is None or _is_int(s["integer_range"], 1, 1 << 31))
                and s.get("layout") in _LAYOUTS):
            raise _bad(where, "inputs as consecutive slots (name, shape, start, integer_range, layout)", s)
        slot = InputSlot(s["name"], tuple(s["shape"]), start, s["integer_range"], s["layout"])
        slots.append(slot)
        start += slot.size
    heads = []
    for h in data["heads"]:
        if not (isinstance(h, dict) and isinstance(h.get("key"), str) and isinstance(h.get("layer"), str)
                and len(h["key"]) <= 200 and len(h["layer"]) <= 200 and _is_int(h.get("width"), 1, 1 << 24)
                and isinstance(h.get("softmax"), bool)):
            raise _bad(where, "outputs as (key, layer, width, softmax)", h)
        heads.append(OutputHead(h["key"], h["layer"], h["width"], h["softmax"]))
    return groups, aliases, slots, heads


def replay_port_builder(port_builder: Callable, data, where: str) -> Callable:
    """``port_builder`` (the one ``--port`` names) wrapped to return the port seen through the recorded view."""
    groups, aliases, slots, heads = view_from_data(data, where)
    taps = UserTaps(port_builder, None, slots)
    taps.groups, taps.aliases, taps.heads = groups, aliases, heads

    def build(**config):
        module = port_builder(**config)
        if not _is_torch_module(module):
            raise UsageError(f"{where}: expected --port to return a torch.nn.Module. Received: "
                             f"{type(module).__name__}.")
        names = {n for n, _ in module.named_modules(remove_duplicate=False)}
        wanted = [m for members in groups.values() for m in members] + [
            p for _, p, _ in aliases.values() if p not in groups]
        missing = [m for m in wanted if m not in names]
        if missing:
            raise UsageError(f"{where}: expected the port the trace was aligned with (modules "
                             f"{', '.join(missing[:4])}). Received: a port without them. Record the trace again "
                             "with this port, or run `parity check --reference ... --port ...`.")
        return taps.view(module)

    build.__name__ = getattr(port_builder, "__name__", "port")
    build.__qualname__ = getattr(port_builder, "__qualname__", build.__name__)
    return build
