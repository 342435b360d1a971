"""Plugin discovery, loading and validation against fake distributions (real dist-info folders)."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest
from tracemark.plugins.api import Rewriter
from tracemark.plugins.errors import PluginLoadError, UnknownRewriterError
from tracemark.plugins.loader import RewriterRegistry, api_compatible, discover


def _by_name(registry, name, dist=None):
    found = [r for r in registry.records if r.name == name and (dist is None or r.distribution == dist)]
    assert len(found) == 1, found
    return found[0]


def test_good_plugin_is_loaded_with_distribution_metadata(fake_site, h):
    mod = fake_site.module("good", h.rewriter_source("Good", "good", extra='api_version = "1.0"'))
    fake_site.dist("acme-good", "2.3.1", {"good": f"{mod}:Good"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    rec = _by_name(registry, "good")
    assert (rec.status, rec.distribution, rec.version, rec.error) == ("loaded", "acme-good", "2.3.1", "")
    assert rec.entry_point == f"{mod}:Good" and rec.description == "fake plugin good"
    assert rec.options_schema["type"] == "object"
    assert registry.get("good").__name__ == "Good" and registry.names() == ["good"]


def test_default_discovery_finds_a_distribution_on_sys_path(fake_site, h):
    mod = fake_site.module("onpath", h.rewriter_source("OnPath", "on-path"))
    fake_site.dist("acme-onpath", "0.1", {"on-path": f"{mod}:OnPath"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[])
    assert _by_name(registry, "on-path").status == "loaded"
    assert _by_name(registry, "restructure").distribution == "tracemark"  # built-ins: same group


def test_import_error_is_reported_not_raised(fake_site, h, caplog):
    mod = fake_site.module("broken", "import tm_module_that_does_not_exist\n")
    fake_site.dist("acme-broken", "1.0", {"broken": f"{mod}:Broken"})
    with caplog.at_level(logging.WARNING, logger="tracemark.plugins.loader"):
        registry = RewriterRegistry.discover(
            strict=False, allowlist=[], entry_points=fake_site.entry_points()
        )
    rec = _by_name(registry, "broken")
    assert rec.status == "failed"
    assert rec.error.startswith("import failed: ModuleNotFoundError") and "\n" not in rec.error
    assert "broken" in caplog.text and "skipped" in caplog.text
    with pytest.raises(UnknownRewriterError, match="'broken' is failed: import failed") as info:
        registry.get("broken")
    assert info.value.status == "failed"


def test_system_exit_at_import_is_contained(fake_site):
    mod = fake_site.module("exits", "raise SystemExit(3)\n")
    fake_site.dist("acme-exits", "1.0", {"exits": f"{mod}:X"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    assert _by_name(registry, "exits").error.startswith("import failed: SystemExit")


def test_wrong_base_class(fake_site):
    mod = fake_site.module("wrongbase", "class NotARewriter:\n    name = 'wrong'\n")
    fake_site.dist("acme-wrong", "1.0", {"wrong": f"{mod}:NotARewriter"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    rec = _by_name(registry, "wrong")
    assert rec.status == "failed" and "not a subclass of tracemark.plugins.api.Rewriter" in rec.error


def test_abstract_rewriter_is_rejected(fake_site):
    source = "from tracemark.plugins.api import Rewriter\nclass Abstract(Rewriter):\n    name = 'abstract'\n"
    mod = fake_site.module("abstract", source)
    fake_site.dist("acme-abstract", "1.0", {"abstract": f"{mod}:Abstract"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    assert "is abstract (does not implement rewrite)" in _by_name(registry, "abstract").error


@pytest.mark.parametrize(
    ("declared", "ok"),
    [("1.0", True), ("1", False), ("2.0", False), ("0.9", False), ("1.7", False), ("x", False)],
)
def test_api_version_compatibility(fake_site, h, declared, ok):
    mod = fake_site.module("ver", h.rewriter_source("Ver", "ver", extra=f"api_version = {declared!r}"))
    fake_site.dist("acme-ver", "1.0", {"ver": f"{mod}:Ver"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    rec = _by_name(registry, "ver")
    assert (rec.status == "loaded") is ok
    if not ok:
        assert "version" in rec.error


def test_api_compatible_rule():
    assert api_compatible("1.0", "1.3") and api_compatible("1.3", "1.3")
    assert not api_compatible("1.4", "1.3") and not api_compatible("2.0", "1.3")


def test_name_must_match_entry_point(fake_site, h):
    mod = fake_site.module("mismatch", h.rewriter_source("Mismatch", "other-name"))
    fake_site.dist("acme-mismatch", "1.0", {"mismatch": f"{mod}:Mismatch"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    assert "differs from Mismatch.name 'other-name'" in _by_name(registry, "mismatch").error


def test_invalid_entry_point_name(fake_site, h):
    mod = fake_site.module("badname", h.rewriter_source("BadName", "Bad,Name"))
    fake_site.dist("acme-badname", "1.0", {"Bad,Name": f"{mod}:BadName"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    assert "invalid rewriter name" in _by_name(registry, "Bad,Name").error


def test_options_must_be_a_pydantic_model_with_a_schema(fake_site, h):
    not_model = h.rewriter_source("NotModel", "not-model", extra="Options = dict")
    no_schema = """
    from typing import Callable
    from pydantic import BaseModel, ConfigDict
    from tracemark.plugins.api import Rewriter

    class Opts(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        hook: Callable[[int], int] = abs

    class NoSchema(Rewriter):
        name = "no-schema"
        Options = Opts
        def rewrite(self, trace, context):
            return trace
    """
    m1 = fake_site.module("notmodel", not_model)
    m2 = fake_site.module("noschema", no_schema)
    fake_site.dist("acme-options", "1.0", {"not-model": f"{m1}:NotModel", "no-schema": f"{m2}:NoSchema"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    assert "Options must be a pydantic BaseModel" in _by_name(registry, "not-model").error
    assert "options JSON schema cannot be produced" in _by_name(registry, "no-schema").error


def test_duplicate_names_between_third_parties_fail_both(fake_site, h):
    m1 = fake_site.module("dup1", h.rewriter_source("DupA", "dup"))
    m2 = fake_site.module("dup2", h.rewriter_source("DupB", "dup"))
    fake_site.dist("acme-a", "1.0", {"dup": f"{m1}:DupA"})
    fake_site.dist("acme-b", "1.0", {"dup": f"{m2}:DupB"})
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=fake_site.entry_points())
    a, b = _by_name(registry, "dup", "acme-a"), _by_name(registry, "dup", "acme-b")
    assert a.status == b.status == "failed"
    assert a.error == "duplicate rewriter name 'dup' (also provided by acme-b)"
    assert "also provided by acme-a" in b.error
    with pytest.raises(UnknownRewriterError):
        registry.get("dup")


def test_builtin_keeps_its_name_against_a_shadowing_plugin(fake_site, h):
    mod = fake_site.module("shadow", h.rewriter_source("Shadow", "watermark"))
    fake_site.dist("evil-shadow", "6.6.6", {"watermark": f"{mod}:Shadow"})
    eps = list(metadata.entry_points(group="tracemark.rewriters")) + fake_site.entry_points()
    registry = RewriterRegistry.discover(strict=False, allowlist=[], entry_points=eps)
    assert _by_name(registry, "watermark", "tracemark").status == "loaded"
    assert _by_name(registry, "watermark", "evil-shadow").status == "failed"
    assert registry.get("watermark").__module__ == "tracemark.plugins.builtin.watermark"


def test_same_entry_point_seen_twice_counts_once(fake_site, h):
    mod = fake_site.module("twice", h.rewriter_source("Twice", "twice"))
    fake_site.dist("acme-twice", "1.0", {"twice": f"{mod}:Twice"})
    eps = fake_site.entry_points() * 2
    assert len(discover(eps)) == 1
    registry = RewriterRegistry.discover(strict=True, allowlist=[], entry_points=eps)
    assert registry.names() == ["twice"]


def test_allowlist_disables_others_without_importing_them(fake_site, h):
    good = fake_site.module("allowed", h.rewriter_source("Allowed", "allowed"))
    bomb = fake_site.module("bomb", "raise RuntimeError('must never be imported')\n")
    fake_site.dist("acme-mixed", "1.0", {"allowed": f"{good}:Allowed", "bomb": f"{bomb}:Bomb"})
    eps = list(metadata.entry_points(group="tracemark.rewriters")) + fake_site.entry_points()
    registry = RewriterRegistry.discover(strict=True, allowlist=["allowed", "restructure"], entry_points=eps)
    status = {r.name: r.status for r in registry.records}
    assert status["allowed"] == status["restructure"] == "loaded"
    assert status["identity"] == "loaded"  # always allowed: the no-op control
    assert status["bomb"] == status["watermark"] == status["semantic"] == "disabled"
    assert "allowlist" in _by_name(registry, "bomb").error
    with pytest.raises(UnknownRewriterError, match="'watermark' is disabled") as info:
        registry.get("watermark")
    assert info.value.status == "disabled"


def test_allowlist_and_strict_from_environment(fake_site, h, monkeypatch):
    good = fake_site.module("envgood", h.rewriter_source("EnvGood", "env-good"))
    broken = fake_site.module("envbroken", "import tm_missing_module_xyz\n")
    fake_site.dist("acme-env", "1.0", {"env-good": f"{good}:EnvGood", "env-broken": f"{broken}:X"})
    monkeypatch.setenv("TRACEMARK_PLUGINS", " env-good , ")
    monkeypatch.setenv("TRACEMARK_STRICT_PLUGINS", "1")
    registry = RewriterRegistry.discover(entry_points=fake_site.entry_points())  # broken one is disabled
    assert {r.name: r.status for r in registry.records} == {"env-good": "loaded", "env-broken": "disabled"}
    monkeypatch.delenv("TRACEMARK_PLUGINS")
    with pytest.raises(PluginLoadError, match="'env-broken' .*failed to load: import failed"):
        RewriterRegistry.discover(entry_points=fake_site.entry_points())
    monkeypatch.setenv("TRACEMARK_STRICT_PLUGINS", "0")
    assert RewriterRegistry.discover(entry_points=fake_site.entry_points()).names() == ["env-good"]


def test_strict_mode_fails_fast_on_the_first_failure(fake_site, h):
    broken = fake_site.module("strictbroken", "class Nope:\n    pass\n")
    fake_site.dist("acme-strict", "1.0", {"a-broken": f"{broken}:Nope"})
    with pytest.raises(
        PluginLoadError, match="'a-broken' \\(acme-strict\\) failed to load: .*not a subclass"
    ):
        RewriterRegistry.discover(strict=True, allowlist=[], entry_points=fake_site.entry_points())


def test_unknown_name_message_lists_available():
    class Only(Rewriter):
        name = "only"

        def rewrite(self, trace, context):
            return trace

    registry = RewriterRegistry.from_classes(Only)
    with pytest.raises(UnknownRewriterError, match=r"unknown rewriter 'nope' \(available: only\)") as info:
        registry.get("nope")
    assert info.value.status == "unknown"


def test_quarantine_marks_failed_and_hides_the_class():
    class Flaky(Rewriter):
        name = "flaky"

        def rewrite(self, trace, context):
            return trace

    registry = RewriterRegistry.from_classes(Flaky)
    registry.quarantine("flaky", "disabled after 4 time-outs")
    assert registry.names() == []
    assert registry.record("flaky").status == "failed"
    with pytest.raises(UnknownRewriterError, match="failed: disabled after 4 time-outs"):
        registry.get("flaky")


def test_installed_builtins_all_load():
    registry = RewriterRegistry.discover(strict=True, allowlist=[])
    assert {"identity", "restructure", "watermark", "semantic", "optimized"} <= set(registry.names())
    for name in ("semantic", "optimized"):
        assert registry.record(name).requires_llm
    assert registry.record("watermark").options_schema["properties"]["fraction"]["maximum"] == 1.0
