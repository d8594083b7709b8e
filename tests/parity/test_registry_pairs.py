"""Every registered pair: the correct port passes every stage in float64 (parametrized over the registry, so a
new pair is tested by this file without edits), through the project's own pytest plugin (the `parity`
fixture a user's CI would use). CI uses each pair's fast_config (reduced input size); the full sizes run in
`parity check NAME` and the benchmark."""
import pytest

from parity.pairs import registry
from parity.core.spec import FLOAT64_POLICY


@pytest.mark.parametrize("name", registry.names())
def test_correct_port_passes_every_stage_float64(parity, name):
    spec = registry.get(name)
    result = parity.check(name, fast=True)  # raises a torch.testing-style AssertionError on a divergence
    assert result, result.summary_line()
    assert {s.name for s in result.stages} == {"structure", "forward_eval", "forward_train", "gradients", "step",
                                               "isolated"}
    for stage in result.stages:
        for t in stage.tensors:
            assert t.rtol <= 1e-8 and t.rel <= 1e-8, (stage.name, t.path, t.rel)
    # every tap of the pair was compared in eval mode (none silently dropped)
    taps = spec.taps(spec.config(**spec.fast_config))
    assert len(result.stage("forward_eval").tensors) == len(taps)


def test_float64_policy_is_no_looser_than_1e8():
    assert all(t.rtol <= 1e-8 and t.norm_rtol is None for t in FLOAT64_POLICY.values())


@pytest.mark.parametrize("name", registry.names())
def test_registration_is_framework_free_data(name):
    spec = registry.get(name)
    cfg = spec.config(**spec.fast_config)
    taps = spec.taps(cfg)
    assert len({t.path for t in taps}) == len(taps), "tap paths must be unique"
    assert spec.published_params.get("total")
