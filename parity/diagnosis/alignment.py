"""A user pair's automatic alignment in the result: the table in the structure stage's
``info["alignment"]`` and one finding per layer left without a partner. The alignment travels on the spec
(``PairSpec.alignment``, a :class:`parity.user.align.Alignment` once the taps are resolved); registered pairs
have none."""
from __future__ import annotations

from typing import Any

from parity.core.results import CheckResult, Finding
from parity.diagnosis.common import Run
from parity.diagnosis.registry import result_rule


def alignment_findings(al) -> list[Finding]:
    """One finding per layer without a partner (warning when it has weights, info otherwise)."""
    out = []
    for r in al.rows:
        if r.status == "unaligned-ref":
            weighted = any(n.name == r.ref and n.weighted for n in al.ref_nodes)
            out.append(Finding(
                "unaligned", r.ref, f"reference layer {r.ref} ({r.ref_class}) has no counterpart in the port"
                + (f": {r.note}" if r.note else ""),
                f"pin it with --align {r.ref}=<port.module.path>" if weighted else "",
                stage="structure", severity="warning" if weighted else "info"))
        elif r.status == "unaligned-port":
            out.append(Finding(
                "unaligned", r.port, f"port module {r.port} ({r.port_class}) has no counterpart in the reference"
                + (f": {r.note}" if r.note else ""), "", stage="structure",
                severity="warning" if r.kind in ("dropout",) or "parameters" in r.note else "info"))
    return out


def annotate_alignment(result: CheckResult, alignment: Any) -> CheckResult:
    """Put the alignment table into the structure stage's ``info["alignment"]`` and its unaligned layers into
    the findings (idempotent; nothing when ``alignment`` is None)."""
    if alignment is None:
        return result
    st = result.stage("structure")
    if st is not None and "alignment" not in st.info:
        st.info["alignment"] = alignment.table()
        st.info["alignment_traced_with"] = alignment.traced_with
    have = {(f.cause, f.path) for f in result.findings}
    for f in alignment_findings(alignment):
        if (f.cause, f.path) not in have:
            result.findings.append(f)
    return result


@result_rule(order=10)
def annotate_user_pair(run: Run) -> None:
    """The spec's alignment (user pairs) into the result, before the rules read the findings."""
    annotate_alignment(run.result, getattr(run.spec, "alignment", None))
