"""The port as the check sees it: the user's own module, unchanged, seen through a thin view that adds what
the alignment found and the user's module does not spell out.

- A *module group* (a Keras SeparableConv2D matched by a depthwise conv and the 1x1 conv it feeds, wherever
  the two live) becomes one module of the view, ``<group path>`` with ``.depthwise`` and ``.pointwise``
  (the same module objects, no copy), so the converter's keys (``depthwise.weight``, ``pointwise.weight``,
  ``pointwise.bias``) and every stage's per-parameter comparison address it like any other layer. Its
  forward hook is the pointwise conv's; calling it runs ``pointwise(depthwise(x))`` (the isolated stage).
- The inputs: the reference's inputs arrive packed in one array (see :mod:`parity.user.inputs`); the view
  unpacks them, converts each to the port's layout and calls the user's ``forward`` with them in the
  reference model's order.
- The outputs: a port with several outputs (a tuple, a list or a dict) returns them to the check concatenated in
  the reference's output order (``pack``, :func:`parity.user.outputs.torch_packer`).

Every parameter of the user's module is a parameter of the view, once (``state_dict`` and
``named_parameters`` list the group's name for a grouped parameter, the user's path for the rest); the
view's ``to`` / ``train`` / ``eval`` reach the user's module. torch is imported inside the functions.
"""
from __future__ import annotations

from typing import Any, Callable

_CLASSES: dict[str, Any] = {}


def _classes():
    if _CLASSES:
        return _CLASSES["group"], _CLASSES["view"]
    from torch import nn

    class ModuleGroup(nn.Module):
        """Several modules of the user's port that stand for one reference layer (depthwise + pointwise)."""

        def __init__(self, depthwise, pointwise, members: tuple[str, ...]):
            super().__init__()
            self.depthwise = depthwise
            self.pointwise = pointwise
            self.members = tuple(members)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

        def register_forward_hook(self, hook, *args, **kwargs):
            """The group's output is its last member's: hook that one, reporting the group as the module."""
            return self.pointwise.register_forward_hook(lambda _m, inp, out: hook(self, inp, out), *args, **kwargs)

        def extra_repr(self) -> str:
            return " + ".join(self.members)

    class PortView(nn.Module):
        """The user's module plus its module groups; forward unpacks the reference's inputs (see module doc)."""

        def __init__(self, port, groups: dict[str, Any], unpack: Callable | None, pack: Callable | None = None):
            super().__init__()
            object.__setattr__(self, "_port", port)
            object.__setattr__(self, "_unpack", unpack)
            object.__setattr__(self, "_pack", pack)
            for name, group in groups.items():
                self.add_module(name, group)
            for name, child in port.named_children():
                self.add_module(name, child)
            for name, p in port.named_parameters(recurse=False):
                self.register_parameter(name, p)
            seen: set[int] = set()
            dup = []
            for key, t in nn.Module.state_dict(self, keep_vars=True).items():
                if id(t) in seen:
                    dup.append(key)
                seen.add(id(t))
            object.__setattr__(self, "_duplicate_keys", tuple(dup))
            self.training = port.training

        @property
        def port(self):
            return self._port

        def forward(self, *args):
            for m in self.children():
                if hasattr(m, "seen"):
                    m.seen = 0
            if self._unpack is not None and len(args) == 1:
                args = self._unpack(args[0])
            out = self._port(*args)
            return self._pack(out) if self._pack is not None else out

        def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
            sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
            for key in self._duplicate_keys:
                sd.pop(prefix + key, None)
            return sd

        def _apply(self, fn, *args, **kwargs):
            super()._apply(fn, *args, **kwargs)
            self._port._apply(fn, *args, **kwargs)  # the root's own buffers; children are already done
            return self

        def train(self, mode: bool = True):
            super().train(mode)
            self._port.train(mode)
            return self

    class CallAlias(nn.Module):
        """The ``call``-th use of a parameter-free module called repeatedly in one forward (``self.act`` after
        every conv): its forward hook fires on that call only (the count restarts with each forward of the
        view)."""

        def __init__(self, module, call: int):
            super().__init__()
            object.__setattr__(self, "_target", module)
            self.call = int(call)
            self.seen = 0

        def forward(self, *args):
            return self._target(*args)

        def register_forward_hook(self, hook, *args, **kwargs):
            def on_call(_m, inp, out):
                self.seen += 1
                if self.seen == self.call:
                    return hook(self, inp, out)
                return None

            return self._target.register_forward_hook(on_call, *args, **kwargs)

        def extra_repr(self) -> str:
            return f"call {self.call} of {type(self._target).__name__}"

    class PaddedAlias(nn.Module):
        """A port conv that pads itself (``Conv2d(padding=p)``) where the reference pads with a ZeroPadding2D
        layer first: the same parameters; called directly (the isolated stage, fed the reference's padded
        input) it does not pad again; its forward hook is the conv's."""

        def __init__(self, conv):
            super().__init__()
            object.__setattr__(self, "_target", conv)
            for k in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups"):
                setattr(self, k, getattr(conv, k))
            self.padding = (0,) * len(conv.kernel_size)
            self.weight = conv.weight
            if conv.bias is not None:
                self.bias = conv.bias
            else:
                self.register_parameter("bias", None)

        def forward(self, x):
            import torch.nn.functional as F

            conv = self._target
            fn = {1: F.conv1d, 3: F.conv3d}.get(len(conv.kernel_size), F.conv2d)
            return fn(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

        def register_forward_hook(self, hook, *args, **kwargs):
            return self._target.register_forward_hook(lambda _m, inp, out: hook(self, inp, out), *args, **kwargs)

    class RolesAlias(nn.Module):
        """A one-layer unit of the port whose children have other names than the converter's (a hand-written
        attention's projections in an ``nn.ModuleList``): the same child modules under the converter's names
        (``q_proj``...), calling and hooking the user's module."""

        def __init__(self, module, roles: dict[str, str]):
            super().__init__()
            object.__setattr__(self, "_target", module)
            for role, path in roles.items():
                self.add_module(role, module.get_submodule(path))

        def forward(self, *args, **kwargs):
            return self._target(*args, **kwargs)

        def register_forward_hook(self, hook, *args, **kwargs):
            return self._target.register_forward_hook(lambda _m, inp, out: hook(self, inp, out), *args, **kwargs)

        def register_forward_pre_hook(self, hook, *args, **kwargs):
            return self._target.register_forward_pre_hook(lambda _m, *rest: hook(self, *rest), *args, **kwargs)

    _CLASSES.update(group=ModuleGroup, view=PortView, call=CallAlias, padded=PaddedAlias, roles=RolesAlias)
    return ModuleGroup, PortView


def port_view(port, groups: dict[str, tuple[str, ...]] | None = None, unpack: Callable | None = None,
              aliases: dict[str, tuple] | None = None, pack: Callable | None = None):
    """The view of ``port`` with ``groups`` (group path -> (depthwise path, pointwise path), from
    :attr:`parity.user.align.Alignment.groups`), ``aliases`` (:attr:`parity.user.align.Alignment.aliases`) and
    an input ``unpack`` function (packed tensor -> tuple of the port's inputs); ``port`` itself when there is
    nothing to add."""
    if not groups and not aliases and unpack is None and pack is None:
        return port
    group_cls, view_cls = _classes()
    modules = dict(port.named_modules(remove_duplicate=False))
    made = {}
    for name, members in (groups or {}).items():
        dw, pw = members[0], members[-1]
        made[name] = group_cls(modules[dw], modules[pw], members)
    for name, (how, path, arg) in (aliases or {}).items():
        target = made.get(path) or modules[path]
        made[name] = (_CLASSES["call"](target, arg) if how == "call" else _CLASSES["roles"](target, arg)
                      if how == "roles" else _CLASSES["padded"](target))
    return view_cls(port, made, unpack, pack)
