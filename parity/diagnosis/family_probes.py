"""The layer families' numeric probes (:attr:`parity.core.families.Family.probes`) as one stage rule: for the
first divergence at a layer of a family kind, gather the evidence a probe reads (the converted reference
weights and the port's loaded ones, both layer outputs) and keep the first hit (an LSTM's gate blocks in
another order, a bias copied twice, the backward half of a Bidirectional taken at the wrong step). Nothing
here names a family: a new family's probes arrive with its entry in the family table."""
from __future__ import annotations

import numpy as np

from parity.core.families import has_probes, probe
from parity.core.results import Finding, TensorDiff
from parity.diagnosis.common import Run, base, finding, module_inputs, port_acts
from parity.diagnosis.forward import converted
from parity.diagnosis.registry import stage_rule

#: before the generic forward rules (which would call a wrong loaded weight "overwritten after loading")
ORDER = 30


def _evidence(run: Run, tap, stage=None, diff: TensorDiff | None = None) -> dict:
    prefix = f"{tap.port}." if tap.port else ""
    want = {k[len(prefix):]: np.asarray(v) for k, v in converted(run, tap).items() if k.startswith(prefix)}
    state = run.ts.module.state_dict()
    got = {k: state[prefix + k].detach().cpu().numpy() for k in want if prefix + k in state}
    ev = {"want": want, "got": got, "ref_info": run.ref.structure.get(tap.ref, {}) if run.ref is not None else {}}
    # the diverging tensor, and the layer's parameters as trained: trainable? did a gradient reach it?
    ev["stage"], ev["tensor"] = getattr(stage, "name", None), getattr(diff, "path", None)
    ev["params"] = {k[len(prefix):]: {"requires_grad": bool(p.requires_grad), "grad": p.grad is not None}
                    for k, p in run.ts.module.named_parameters() if k.startswith(prefix)}
    # the layer alone: did the port's module match when fed the reference's input (in the tap's layout)?
    iso = run.result.stage("isolated")
    ev["isolated_ok"] = next((bool(t.passed) for t in (iso.tensors if iso is not None else []) if t.path == tap.path),
                             None)
    if tap.path in getattr(run.ref, "eval_acts", {}):
        ev["ref_out"] = np.asarray(run.ref.eval_acts[tap.path])
        ev["port_out"] = port_acts(run).get(tap.path)
        ev["port_in"] = module_inputs(run, tap)
    # the model's token ids (integer inputs: the batch of the eval forward), for the mask_zero probe
    inputs = getattr(run.ref, "inputs", None) if run.ref is not None else None
    if inputs and np.issubdtype(np.asarray(inputs[0]).dtype, np.integer):
        ev["tokens"] = np.asarray(inputs[0])
    # the module's first recorded call (its extra arguments: an RNN's initial state) and whether the reference has
    # an encoder returning its states (return_state=True), for the initial-state probe
    ev["call"] = (run.ts.__dict__.get("_attention_calls") or {}).get(tap.port)
    structure = getattr(run.ref, "structure", None) or {}
    ev["ref_return_state"] = any(isinstance(i, dict) and i.get("return_state") for i in structure.values())
    ev["ref_mask_zero"] = any(isinstance(i, dict) and i.get("mask_zero") for i in structure.values())
    return ev


@stage_rule("forward_eval", "isolated", "forward_train", "gradients", family="families", order=ORDER)
def family_probes(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    path = base(diff.path)
    tap = run.tap_by_path.get(path)
    if tap is None or not run.arrays or tap.port not in run.ts.modules or not has_probes(tap.kind):
        return []
    return [finding(cause, path, message, fix, stage.name, evidence=evidence)
            for cause, message, fix, evidence in probe(tap.kind, _evidence(run, tap, stage, diff))][:1]
