"""The reference cache (``parity.io.cache``): the key follows everything that determines the reference run and
nothing of the port; a hit replays without TensorFlow and gives the same numbers as a fresh check; a corrupt,
truncated or mismatching entry is discarded and recomputed; the directory stays within its bound; nothing an
entry says is run.

The suite runs with the cache off (``tests/conftest.py``: ``PARITY_NO_CACHE=1``, ``PARITY_CACHE_DIR`` a
temporary directory); these tests turn it on, in that directory or in their own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from parity.harness import check
from parity.io import cache
from parity.pairs import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = registry.get("minixception")
FAST = dict(SPEC.fast_config)
EVAL_STAGES = "structure,forward_eval"


@pytest.fixture
def cache_on(monkeypatch):
    """The cache on, in the suite's temporary cache directory (shared by the tests that use it)."""
    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    return cache.ReferenceCache()


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """One recorded entry (minixception, fast config, eval stages) in a cache of this module's own."""
    c = cache.ReferenceCache(str(tmp_path_factory.mktemp("cache")))
    req = cache.make_request(SPEC, stages=EVAL_STAGES, config=FAST)
    ref = cache.reference_for(req, c)
    assert not ref.hit and os.path.isfile(ref.path)
    return c, req, ref


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop(cache.NO_CACHE_ENV, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# -- the key ---------------------------------------------------------------------------------------------------
def test_key_follows_the_reference_sources_and_not_the_port():
    files = cache.source_closure(["reference_keras.minixception", "parity.pairs.minixception",
                                  *cache.REFERENCE_MACHINERY], cache.PROJECT_PACKAGES)
    assert {"reference_keras.minixception", "parity.pairs.minixception", "parity.core.conventions",
            "parity.backends.keras_side", "weight_converters.keras"} <= set(files)
    assert not [m for m in files if m.startswith("ported_torch")]
    assert "parity.backends.torch_side" not in files and "parity.harness" not in files


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"batch": 4}, {"dtype": "float32"}, {"stages": "forward_eval"}, {"steps": 2},
    {"optimizer": "adam"}, {"config": {"num_classes": 5}},
])
def test_key_changes_with_each_setting(change):
    base = dict(stages=None, config=FAST)
    assert cache.cache_key(cache.make_request(SPEC, **base)) != cache.cache_key(cache.make_request(SPEC, **{**base,
                                                                                                        **change}))


def _reference_package(tmp_path, monkeypatch, name: str, **more: str):
    """A package ``name`` on sys.path: ``model.build`` (the reference builder) imports ``helpers.WIDTH``;
    ``more`` adds modules by name and source."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("WIDTH = 8\n")
    (pkg / "model.py").write_text(f"from {name}.helpers import WIDTH\n\ndef build(**kw):\n    return WIDTH\n")
    for module, text in more.items():
        (pkg / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_key_changes_with_reference_source_weights_and_versions(tmp_path, monkeypatch):
    pkg = _reference_package(tmp_path, monkeypatch, "refpkg_key", port="def build(**kw):\n    return 1\n")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 64)

    def key(**kw):
        return cache.cache_key(cache.make_request(SPEC, reference="refpkg_key.model:build", weights=str(weights),
                                                  **kw))

    k0 = key()
    (pkg / "port.py").write_text("def build(**kw):\n    return 2  # an edit of the port\n")
    assert key() == k0, "the port is not part of the reference's key"
    (pkg / "helpers.py").write_text("WIDTH = 16\n")
    k1 = key()
    assert k1 != k0, "a module the reference builder imports is part of the key"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"1" * 64)
    k2 = key()
    assert k2 != k1
    versions = cache.installed_versions()
    assert versions["keras"] and versions["tensorflow"]  # read from metadata, TensorFlow not imported for it
    monkeypatch.setattr(cache, "installed_versions", lambda: {**versions, "keras": "keras==0.0.0"})
    assert key() != k2


def test_import_memo_gives_the_same_key_and_parses_a_changed_file_again(tmp_path, monkeypatch):
    """A key through the memo equals one without; a file edited to import one more module of its package makes
    that module a source (the memo is keyed by content, so it cannot hide the edit); a memo file that is not
    what ImportMemo writes is ignored, and a directory that cannot be written is no error."""
    pkg = _reference_package(tmp_path, monkeypatch, "refpkg_memo", extra="DEPTH = 2\n")
    req = cache.make_request(SPEC, reference="refpkg_memo.model:build")
    where = tmp_path / "c"
    parsed = []
    real = cache._scan_imports
    monkeypatch.setattr(cache, "_scan_imports", lambda *a: parsed.append(a[1]) or real(*a))

    def key():
        memo = cache.ImportMemo(str(where))
        k = cache.cache_key(req, memo)
        memo.save()
        return k

    k0 = key()
    assert parsed and k0 == cache.cache_key(req)
    parsed.clear()
    assert key() == k0 and parsed == [], "a second key parses nothing"
    (pkg / "model.py").write_text("from refpkg_memo.helpers import WIDTH\nfrom refpkg_memo import extra\n\n"
                                  "def build(**kw):\n    return WIDTH * extra.DEPTH\n")
    parsed.clear()
    k1 = key()
    assert str(pkg / "model.py") in parsed and str(pkg / "helpers.py") not in parsed, \
        "the edited file is parsed again (and what it newly imports), an unchanged one is not"
    assert k1 != k0 and "refpkg_memo.extra" in cache.reference_sources(req, cache.ImportMemo(str(where)))
    (pkg / "extra.py").write_text("DEPTH = 3\n")
    assert key() != k1, "the newly imported module is part of the key"
    memo_file = where / cache.IMPORTS_MEMO
    for junk in ("{not json", json.dumps({"schema": cache.IMPORTS_MEMO_SCHEMA, "files": {"x": [1]}}),
                 json.dumps(["a list"])):
        memo_file.write_text(junk)
        assert cache.ImportMemo(str(where)).table == {}
        assert key() == cache.cache_key(req)
    assert json.loads(memo_file.read_text())["schema"] == cache.IMPORTS_MEMO_SCHEMA, "rewritten after junk"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    memo = cache.ImportMemo(str(blocked))
    assert cache.cache_key(req, memo) == cache.cache_key(req)
    memo.save()  # cannot be written: no error


# -- hits, numbers, TensorFlow -----------------------------------------------------------------------------------
def test_hit_replays_the_same_numbers_as_a_fresh_check(tmp_path):
    """Every tensor's max|Δ| of a fresh check (Keras in this process), of the check that filled the cache, and
    of one from the cache are equal (minixception, fast config, every stage)."""
    c = cache.ReferenceCache(str(tmp_path / "cache"))
    fresh = check(SPEC, config=FAST)
    first = cache.cached_check(SPEC, config=FAST, cache=c)
    again = cache.cached_check(SPEC, config=FAST, cache=c)
    assert fresh.passed and first.passed and again.passed
    assert first.environment["reference_cache"]["hit"] is False
    assert again.environment["reference_cache"]["hit"] is True
    info = again.environment["reference_cache"]
    assert again.reference_source == f"cache:{info['key']} (recorded {info['recorded']})"
    assert info["recorded"] == first.environment["reference_cache"]["recorded"] != "?"

    def table(result):
        return {(s.name, t.path): (t.max_abs, t.rel) for s in result.stages for t in s.tensors}

    t_fresh = table(fresh)
    assert len(t_fresh) > 300
    assert table(first) == t_fresh
    assert table(again) == t_fresh


def test_cli_second_check_comes_from_the_cache_without_tensorflow(tmp_path):
    cache_dir = tmp_path / "cache"
    out = tmp_path / "rep"
    argv = ["check", "minixception", "--fast", "--stages", EVAL_STAGES, "--out", str(out), "-q"]
    env = _env(PARITY_CACHE_DIR=str(cache_dir))
    p = subprocess.run([sys.executable, "-m", "parity", *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((out / "report.json").read_text())["reference_source"].startswith("cache:")
    code = textwrap.dedent(f"""
        import sys
        from parity.cli import main
        rc = main({argv!r})
        assert not {{"tensorflow", "keras"}} & set(sys.modules), "TensorFlow was imported"
        assert "torch._dynamo" not in sys.modules
        sys.exit(rc)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("PASSED minixception")
    rep = json.loads((out / "report.json").read_text())
    assert rep["environment"]["reference_cache"]["hit"] is True
    assert rep["environment"]["reference_cache"]["summary"].startswith("reference from cache (key ")


def test_cli_no_cache_computes_the_reference(cache_on, tmp_path, capsys):
    from parity.cli import main

    argv = ["check", "minixception", "--fast", "--stages", EVAL_STAGES, "--out", str(tmp_path), "-q"]
    assert main(argv + ["--no-cache"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["reference_source"] == "keras"
    assert main(argv) == 0
    assert json.loads((tmp_path / "report.json").read_text())["reference_source"].startswith("cache:")
    capsys.readouterr()


def test_suite_runs_with_the_cache_off_in_a_temporary_directory():
    assert os.environ[cache.NO_CACHE_ENV] == "1"
    assert not cache.enabled()
    home = os.path.join(os.path.expanduser("~"), ".cache", "parity")
    assert os.path.abspath(os.environ[cache.CACHE_DIR_ENV]) != home
    assert cache.default_dir() == os.path.abspath(os.environ[cache.CACHE_DIR_ENV])


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_dir() == str(tmp_path / "parity")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "parity")


# -- an entry is never trusted -----------------------------------------------------------------------------------
def _copy_entry(entry, tmp_path):
    c, req, ref = entry
    mine = cache.ReferenceCache(str(tmp_path / "c"))
    os.makedirs(mine.directory)
    shutil.copy(ref.path, mine.path(ref.key))
    return mine, req, ref


def test_truncated_entry_is_discarded_with_a_warning(entry, tmp_path):
    warnings = []
    mine, req, ref = _copy_entry(entry, tmp_path)
    mine.warn = warnings.append
    with open(mine.path(ref.key), "r+b") as f:
        f.truncate(os.path.getsize(mine.path(ref.key)) - 1000)
    assert mine.lookup(ref.key, req) is None
    assert not os.path.exists(mine.path(ref.key))
    assert len(warnings) == 1 and "discarded" in warnings[0] and "truncated" in warnings[0]


def test_garbage_entry_is_discarded(entry, tmp_path):
    warnings = []
    mine, req, ref = _copy_entry(entry, tmp_path)
    mine.warn = warnings.append
    with open(mine.path(ref.key), "wb") as f:
        f.write(b"not a safetensors file at all" * 10)
    assert mine.lookup(ref.key, req) is None and len(warnings) == 1
    assert not os.path.exists(mine.path(ref.key))


def test_entry_recorded_with_other_settings_is_discarded(entry, tmp_path):
    warnings = []
    mine, req, ref = _copy_entry(entry, tmp_path)
    mine.warn = warnings.append
    other = cache.make_request(SPEC, stages=EVAL_STAGES, config=FAST, seed=7)
    assert mine.lookup(ref.key, other) is None
    assert "expected seed 7. Received: 0" in warnings[0]


def test_entry_naming_code_runs_none_of_it(entry, tmp_path):
    """An entry whose metadata names ``os:system`` as the port, with a config for it: the check takes the
    pair from the registry and the port from its own arguments; the entry's words are data."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    mine, req, ref = _copy_entry(entry, tmp_path)
    path = mine.path(ref.key)
    with safe_open(path, framework="numpy") as f:
        metadata = dict(f.metadata())
    body = json.loads(metadata["parity.io.trace"])
    sentinel = tmp_path / "pwned"
    body["meta"].update(port="os:system", registered=False)
    metadata["parity.io.trace"] = json.dumps(body)
    tensors = load_file(path)
    save_file(tensors, path, metadata=metadata)
    hit = mine.lookup(ref.key, req)
    assert hit is not None
    ref2 = cache.CachedReference(run=hit, key=ref.key, path=path, hit=True, recorded="?")
    hit.meta["config"] = dict(req.config)
    result = cache.run_port_check(req, ref2)
    assert result.passed and not sentinel.exists()
    # a config smuggled into the entry is refused before the port builder sees it
    body["meta"]["config"] = {"command": f"touch {sentinel}"}
    metadata["parity.io.trace"] = json.dumps(body)
    save_file(tensors, path, metadata=metadata)
    assert mine.lookup(ref.key, req) is None and not sentinel.exists()


# -- the bound -----------------------------------------------------------------------------------------------------
def test_least_recently_used_entries_go_first(tmp_path):
    c = cache.ReferenceCache(str(tmp_path), max_bytes=2500)
    for i, name in enumerate(["old", "mid", "new"]):
        p = tmp_path / f"{name}{cache.ENTRY_SUFFIX}"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
    stale = tmp_path / f".x{cache.ENTRY_SUFFIX}.abc.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    removed = c.evict(keep=str(tmp_path / f"old{cache.ENTRY_SUFFIX}"))
    assert [os.path.basename(p) for p in removed] == [f"mid{cache.ENTRY_SUFFIX}"]
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path)) == [f"new{cache.ENTRY_SUFFIX}", f"old{cache.ENTRY_SUFFIX}"]


def test_max_bytes_from_the_environment(monkeypatch):
    monkeypatch.setenv(cache.MAX_BYTES_ENV, "12345")
    assert cache.ReferenceCache().max_bytes == 12345
    monkeypatch.setenv(cache.MAX_BYTES_ENV, "lots")
    with pytest.raises(cache.UsageError, match="PARITY_CACHE_MAX_BYTES: expected a number of bytes"):
        cache.ReferenceCache()


def test_a_hit_refreshes_the_entry_for_lru(entry, tmp_path):
    mine, req, ref = _copy_entry(entry, tmp_path)
    os.utime(mine.path(ref.key), (1000, 1000))
    assert mine.lookup(ref.key, req) is not None
    assert os.path.getmtime(mine.path(ref.key)) > 1000


# -- torch.optim without torch._dynamo ---------------------------------------------------------------------------
_OPT_SCRIPT = textwrap.dedent("""
    import sys
    import parity
    import torch
    if sys.argv[1] == "plain":
        from parity.core.env import optimizers_without_dynamo_import
        assert optimizers_without_dynamo_import() > 0
    elif sys.argv[1] == "import_torch":  # the path every check, replay and conversion takes
        from parity.core.env import import_torch
        import_torch()
    out = []
    for cls, kw in ((torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.02)),
                    (torch.optim.Adam, dict(lr=1e-3, eps=1e-7)), (torch.optim.RMSprop, dict(lr=1e-3))):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(17, dtype=torch.float64))
        opt = cls([p], **kw)
        for _ in range(3):
            opt.zero_grad()
            (p ** 3).sum().backward()
            opt.step()
        assert torch.is_grad_enabled()
        out.append(p.detach().numpy().tobytes().hex())
    print(" ".join(out))
    print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
""")


def test_optimizers_step_identically_without_importing_dynamo():
    runs = {}
    for mode in ("plain", "import_torch", "torch"):
        p = subprocess.run([sys.executable, "-c", _OPT_SCRIPT, mode], capture_output=True, text=True,
                           env=_env(), cwd=ROOT)
        assert p.returncode == 0, p.stderr
        runs[mode] = p.stdout.split("\n")
    # bit-identical parameters after 3 steps of each optimizer
    assert runs["plain"][0] == runs["import_torch"][0] == runs["torch"][0]
    assert runs["plain"][1] == runs["import_torch"][1] == "no dynamo" and runs["torch"][1] == "dynamo"


def test_unwritable_cache_directory_checks_without_it(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    warnings = []
    c = cache.ReferenceCache(str(blocker / "cache"), warn=warnings.append)
    assert not c.writable()
    result = cache.cached_check(SPEC, stages=EVAL_STAGES, config=FAST, cache=c)
    assert result.passed and result.reference_source == "keras"
    assert len(warnings) == 1 and "expected a writable directory" in warnings[0]
    assert "Checking without the cache." in warnings[0]
