"""The port side of the alignment: a torch module's calls as :class:`parity.backends.trace_nodes.Node` (forward
hooks on the units that compute something, data flow recorded at hook time, functional ops from a ``torch.fx``
trace when the model is traceable) and the grouping of a depthwise conv with the 1x1 conv it feeds into one
separable convolution. torch is imported inside the functions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parity.backends.trace_nodes import (
    CNN_KINDS, FUNCTIONAL_OPS, GROUP_JOIN, TORCH_ACTIVATIONS, AlignmentError, Node, close_names, kind_from_name)
from parity.core import families
from parity.core.families.attention import ROLES
from parity.core.errors import UsageError, UserCodeError
from weight_converters.keras import LAYER_VARS


def _is_unit(m) -> bool:
    """A separable-conv module (``depthwise`` + ``pointwise`` children and no other parameters: a whole model
    that merely names two of its layers so is not one) or a family's multi-child layer."""
    if families.torch_unit_kind(m) is not None:
        return True
    if not (hasattr(m, "depthwise") and hasattr(m, "pointwise")):
        return False
    if any(True for _ in m.parameters(recurse=False)):
        return False
    return not any(any(True for _ in c.parameters()) for n, c in m.named_children() if n not in ("depthwise",
                                                                                                 "pointwise"))


def torch_kind(m) -> tuple[str, str | None]:
    from torch import nn

    cls = type(m).__name__
    if families.torch_unit_kind(m) is not None:  # one layer made of children (hand-written attention)
        return families.torch_unit_kind(m), None
    if _is_unit(m):
        return ("separable_conv1d" if isinstance(getattr(m, "depthwise", None), nn.Conv1d) else "separable_conv2d"), None
    if isinstance(m, nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels and \
            m.out_channels % m.in_channels == 0:
        return "depthwise_conv1d", None  # parity.core.families.conv1d: a DepthwiseConv1D
    if isinstance(m, nn.Conv2d):
        if m.groups > 1 and m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
            return "depthwise_conv2d", None
        return "conv2d", None
    if isinstance(m, nn.Linear):
        return "dense", None
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)):
        return "batchnorm", None
    if isinstance(m, nn.Softmax):
        return "softmax", None
    for base in type(m).__mro__:
        if base.__module__.startswith("torch.nn") and base.__name__ in TORCH_ACTIVATIONS:
            return "activation", TORCH_ACTIVATIONS[base.__name__]
    if isinstance(m, nn.MaxPool2d):
        return "maxpool", None
    if isinstance(m, nn.AvgPool2d):
        return "avgpool", None
    if isinstance(m, (nn.AdaptiveAvgPool2d,)):
        return "gap", None
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
        return "dropout", None
    if isinstance(m, nn.Flatten):
        return "flatten", None
    if isinstance(m, nn.LocalResponseNorm):
        return "lrn", None
    for base in type(m).__mro__:  # a subclass of nn.LSTM is an LSTM
        fam = families.torch_kind(base.__name__)
        if fam is not None:
            return fam, None
    return kind_from_name(cls), None


def _shape(t) -> tuple | None:
    return tuple(int(d) for d in t.shape[1:]) if hasattr(t, "shape") else None


def _units(module) -> dict[str, Any]:
    """Modules that compute something: leaves, and depthwise+pointwise units (whose children are skipped)."""
    units = {}
    skip_prefixes: list[str] = []
    for path, m in module.named_modules():
        if path == "":
            if _is_unit(m):
                units[path] = m
            continue
        if any(path.startswith(p + ".") for p in skip_prefixes):
            continue
        if _is_unit(m):
            units[path] = m
            skip_prefixes.append(path)
        elif not any(True for _ in m.children()):
            units[path] = m
    return units


@dataclass
class PortTrace:
    nodes: list[Node]
    calls: list[dict]           # hook records in call order: path, inputs, output (tensors of the example run)
    traced_with: str


def _zero_border(x) -> tuple[tuple[int, int], ...]:
    """(leading, trailing) count of all-zero slices along each spatial axis of (N, C, *spatial)."""
    out = []
    for axis in range(2, x.dim()):
        live = (x != 0).movedim(axis, 0).flatten(1).any(dim=1).nonzero().flatten()
        n = int(x.shape[axis])
        out.append((int(live[0]), n - 1 - int(live[-1])) if live.numel() else (n, n))
    return tuple(out)


def trace_torch(module, example, separable=None, forced_groups=()) -> PortTrace:
    """Run ``module`` once (eval, no grad) on ``example`` (a tensor, or a tuple of tensors for a port with
    several inputs) with hooks on every unit; return the call sequence as nodes. The module's mode is
    restored; its weights are not touched.

    Data flow is recorded at hook time (which call made each tensor a call reads), so an in-place activation
    (``nn.ReLU(inplace=True)``, ``F.relu_``) counts as the producer of what follows it. ``separable``: the
    (depthwise, pointwise) torch weight shapes of the reference's separable convolutions; a depthwise conv
    whose only consumer is a 1x1 conv with such shapes becomes one ``separable_conv2d`` node, wherever the two
    modules live (see :func:`group_separable`)."""
    import torch

    units = _units(module)
    calls: list[dict] = []
    handles = []
    examples = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    made_by: dict[int, int] = {id(t): -1 for t in examples}
    for path, m in units.items():
        def hook(mod, inp, out, path=path):
            ins = [t for t in inp if torch.is_tensor(t)]
            k = len(calls)
            if isinstance(out, tuple) and out and torch.is_tensor(out[0]):  # nn.MultiheadAttention: (out, weights)
                out = out[0]
            calls.append({"path": path, "inputs": ins, "output": out if torch.is_tensor(out) else None,
                          "producers": [made_by[id(t)] for t in ins if id(t) in made_by]})
            if torch.is_tensor(out):
                made_by[id(out)] = k  # an in-place op returns its input: the latest writer owns it
        handles.append(m.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*examples)
    except UsageError:
        raise
    except Exception as exc:  # the user's forward raised: theirs to fix (exit 2), not a bug in parity
        raise UserCodeError(f"the port's forward ({type(module).__name__}.forward, called with "
                            f"{len(examples)} input(s) of shape {', '.join(str(tuple(t.shape)) for t in examples)})",
                            exc) from exc
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    nodes = []
    seen_count: dict[str, int] = {}
    for k, c in enumerate(calls):
        m = units[c["path"]]
        kind, act = torch_kind(m)
        seen_count[c["path"]] = seen_count.get(c["path"], 0) + 1
        params = {k2: tuple(v.shape) for k2, v in m.named_parameters()}
        params.update({k2: tuple(v.shape) for k2, v in m.named_buffers() if not k2.endswith("num_batches_tracked")})
        info = {"call": seen_count[c["path"]], "call_k": k}
        roles = families.torch_unit_roles(m) if kind == "attention" else None
        if roles is not None:  # projections with other names: the converter's names, and the real paths
            real = dict(zip(ROLES, roles))
            params = {f"{role}.{pn}": tuple(p.shape) for role, path in real.items()
                      for pn, p in m.get_submodule(path).named_parameters()}
            info.update(roles=real)
        if isinstance(m, torch.nn.RNNBase):  # a time-major port (batch_first=False) is compared as such
            info.update(batch_first=bool(m.batch_first))
        x0 = c["inputs"][0] if c["inputs"] else None
        if isinstance(m, torch.nn.Conv1d) and x0 is not None and x0.dim() == 3 and x0.shape[-1]:
            # all-zero time steps at the ends of its input: a pad the port applies before the module (F.pad)
            live = (x0 != 0).flatten(0, 1).any(dim=0).nonzero().flatten()
            n = int(x0.shape[-1])
            info.update(zero_steps=(int(live[0]), n - 1 - int(live[-1])) if live.numel() else (n, n),
                        padding=tuple(m.padding) if isinstance(m.padding, tuple) else None,
                        kernel=tuple(m.kernel_size), stride=tuple(m.stride), groups=m.groups)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            info.update(kernel=tuple(m.kernel_size), stride=tuple(m.stride), groups=m.groups,
                        padding=tuple(m.padding) if isinstance(m.padding, tuple) else None)
            if x0 is not None and x0.dim() in (4, 5):  # all-zero slices at the borders: an F.pad before the module
                info.update(zero_border=_zero_border(x0))
        nodes.append(Node(name=c["path"], cls=type(m).__name__, kind=kind, act=act,
                          params=params if kind in CNN_KINDS or kind in LAYER_VARS else {},
                          out_shape=_shape(c["output"]) if c["output"] is not None else None,
                          in_shapes=[_shape(t) for t in c["inputs"]],
                          producers=list(c["producers"]), info=info))
    if separable or forced_groups:
        nodes = group_separable(nodes, separable or [], forced_groups)
    traced = "hooks"
    fx_nodes = _fx_sequence(module, units)
    if fx_nodes is not None:
        merged = _merge_fx(nodes, fx_nodes)
        if merged is not None:
            nodes, traced = merged, "torch.fx + hooks"
    return PortTrace(nodes=nodes, calls=calls, traced_with=traced)


def group_name(members) -> str:
    """``("block1.sep.0", "block1.sep.1")`` -> ``"block1/sep/0+1"``: the common prefix once, then the members."""
    parts = [m.split(".") for m in members]
    common = []
    for level in zip(*parts):
        if all(x == level[0] for x in level):
            common.append(level[0])
        else:
            break
    if len(common) == min(len(p) for p in parts):
        common = common[:-1]
    rest = ["/".join(p[len(common):]) for p in parts]
    return "/".join(common + [GROUP_JOIN.join(rest)])


def group_separable(nodes: list[Node], separable, forced=()) -> list[Node]:
    """Merge each depthwise conv whose output feeds exactly one call, a 1x1 stride-1 ungrouped conv, into one
    ``separable_conv2d`` node when the (depthwise, pointwise) weight shapes are one of the reference's
    separable convolutions (``separable``: a list of shape pairs; each is used as often as it occurs).
    The node's ``params`` use the converter's keys (``depthwise.weight``, ``pointwise.weight`` ...) and
    ``info["members"]`` the two module paths; names decide nothing."""
    budget: dict[tuple, int] = {}
    for sig in separable:
        budget[tuple(sig)] = budget.get(tuple(sig), 0) + 1
    consumers: dict[int, list[int]] = {}
    for j, n in enumerate(nodes):
        for q in n.producers:
            consumers.setdefault(q, []).append(j)
    merge: dict[int, int] = {}
    index = {}
    for i, n in enumerate(nodes):
        index.setdefault(n.name, i)
    for members in forced:  # pinned by the user (--align REF=DW+PW): merged whatever the data flow says
        i, j = index.get(members[0]), index.get(members[-1])
        if i is None or j is None or i == j:
            raise AlignmentError(f"--align ...={GROUP_JOIN.join(members)}: expected two module paths of the port "
                                 f"that run in forward (depthwise{GROUP_JOIN}pointwise). Received: "
                                 f"{[m for m in members if m not in index] or list(members)}."
                                 f"{close_names(members[0], list(index))}")
        merge[i] = j
    for i, n in enumerate(nodes):
        if i in merge:
            continue
        if n.kind not in ("depthwise_conv2d", "depthwise_conv1d") or n.cls.lower().startswith("separable") \
                or "weight" not in n.params:
            continue
        cons = consumers.get(i, [])
        if len(cons) != 1:
            continue
        j = cons[0]
        pw = nodes[j]
        one = (1,) if n.kind == "depthwise_conv1d" else (1, 1)  # a SeparableConv1D: kernel-1 pointwise Conv1d
        if (pw.kind != n.kind.replace("depthwise_", "") or pw.info.get("kernel") != one or pw.info.get("stride") != one
                or pw.info.get("groups") != 1 or pw.producers != [i] or "weight" not in pw.params):
            continue
        sig = (tuple(n.params["weight"]), tuple(pw.params["weight"]))
        if budget.get(sig, 0) < 1 or j in merge.values() or j in merge:
            continue
        budget[sig] -= 1
        merge[i] = j
    if not merge:
        return nodes
    drop = set(merge.values())
    new_index: dict[int, int] = {}
    out: list[Node] = []
    for i, n in enumerate(nodes):
        if i in drop:
            continue
        if i in merge:
            pw = nodes[merge[i]]
            params = {f"depthwise.{k}": v for k, v in n.params.items()}
            params.update({f"pointwise.{k}": v for k, v in pw.params.items()})
            members = (n.name, pw.name)
            kind = "separable_conv1d" if n.kind == "depthwise_conv1d" else "separable_conv2d"
            n = Node(name=group_name(members), cls=f"{n.cls}+{pw.cls}", kind=kind, params=params,
                     out_shape=pw.out_shape, in_shapes=n.in_shapes, producers=n.producers,
                     info={"call": max(n.info.get("call", 1), pw.info.get("call", 1)),
                           "call_k": pw.info.get("call_k"), "members": members})
            new_index[merge[i]] = len(out)
        new_index[i] = len(out)
        out.append(n)
    for n in out:
        n.producers = [new_index.get(q, q) if q >= 0 else q for q in n.producers]
    return out


def _fx_sequence(module, units) -> list[tuple[str, str, str | None]] | None:
    """``[(op, name, kind/act)]`` in program order from a torch.fx trace whose leaves are the units; None when
    the model is not symbolically traceable (data-dependent control flow...)."""
    try:
        import torch.fx as fx

        unit_ids = {id(m) for m in units.values()}

        class _Tracer(fx.Tracer):
            def is_leaf_module(self, m, qualname):
                return id(m) in unit_ids or super().is_leaf_module(m, qualname)

        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001  (any tracing failure means: use the hook order alone)
        return None
    seq = []
    for n in graph.nodes:
        if n.op == "call_module":
            seq.append(("module", str(n.target), None))
        elif n.op in ("call_function", "call_method"):
            name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            if name in FUNCTIONAL_OPS:
                seq.append(("function", name, None))
    return seq


def _merge_fx(nodes: list[Node], fx_seq) -> list[Node] | None:
    """Insert the functional ops of the fx trace between the hooked module calls (same program order)."""
    out: list[Node] = []
    i = 0
    pending: list[str] = []  # the remaining members of a module group
    for op, name, _ in fx_seq:
        if op == "module":
            if pending:
                if pending[0] != name:
                    return None
                pending.pop(0)
                continue
            if i >= len(nodes):
                return None
            members = list(nodes[i].info.get("members", ()))
            if (members[0] if members else nodes[i].name) != name:
                return None  # the fx program order disagrees with the real call order: trust the hooks
            pending = members[1:]
            out.append(nodes[i])
            i += 1
        else:
            kind, act = FUNCTIONAL_OPS[name]
            out.append(Node(name=f"<{name}>", cls=name, kind=kind, act=act, functional=True))
    if i != len(nodes) or pending:
        return None
    pos = {id(n): k for k, n in enumerate(out)}
    call_to_node = [pos[id(n)] for n in nodes]
    for n in nodes:
        n.producers = [call_to_node[q] if q >= 0 else -1 for q in n.producers]
    # a view/reshape/flatten/mean is a "flatten"/"gap" only where it changes rank: drop the rest
    keep = []
    for k, n in enumerate(out):
        if n.functional and n.kind in ("flatten", "gap"):
            prev = next((p for p in reversed(out[:k]) if not p.functional and p.out_shape), None)
            if prev is None or len(prev.out_shape) not in (3, 4):  # (C, H, W) or a volume's (C, D, H, W)
                continue
        keep.append(n)
    new_pos = {id(n): k for k, n in enumerate(keep)}
    for n in keep:
        n.producers = [new_pos.get(id(out[q]), -2) if q >= 0 else -1 for q in n.producers]
        n.producers = [q for q in n.producers if q != -2]
    return keep
