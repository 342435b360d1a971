"""Discover, load and validate rewriter plugins registered under the ``tracemark.rewriters`` group.

Each entry point goes through three typed stages, and every one of them ends in a :class:`PluginRecord`:

1. :class:`DiscoveredPlugin` - the entry point and the distribution that declares it (no code imported);
2. :class:`LoadedPlugin` - the entry point's object was imported;
3. validated - a concrete :class:`~tracemark.plugins.api.Rewriter` subclass whose ``name`` equals the
   entry-point name, whose ``api_version`` is compatible with :data:`~tracemark.plugins.api.API_VERSION`
   (same major, minor not newer than the host's) and whose ``Options`` is a pydantic model with a JSON
   schema.

Policies (documented in README):

* **Broken plugins** are skipped: status ``failed`` with the error text, logged at WARNING. With
  ``strict=True`` (default from ``TRACEMARK_STRICT_PLUGINS=1``) the first failure raises
  :class:`~tracemark.plugins.errors.PluginLoadError` instead.
* **Allowlist** (``TRACEMARK_PLUGINS=a,b``): plugins not listed get status ``disabled`` and are never
  imported. It applies to built-ins too, except ``identity`` (the no-op control), which is always allowed.
* **Duplicate names**: when several *enabled* entry points claim one name, none of them is trusted - all
  get status ``failed`` ("duplicate rewriter name ...") - unless exactly one claimant is tracemark itself,
  in which case the built-in keeps the name and the others fail. A third-party distribution therefore
  cannot silently shadow ``watermark``, and two third-party plugins never win by ``sys.path`` order.
  The same entry point seen twice (one distribution on two path entries) counts once.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel
from tracemark.plugins.api import API_VERSION, ENTRY_POINT_GROUP, Rewriter
from tracemark.plugins.errors import PluginLoadError, UnknownRewriterError

log = logging.getLogger(__name__)

STRICT_ENV = "TRACEMARK_STRICT_PLUGINS"
ALLOWLIST_ENV = "TRACEMARK_PLUGINS"
ALWAYS_ALLOWED = frozenset({"identity"})
HOST_DISTRIBUTION = "tracemark"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

Status = Literal["loaded", "failed", "disabled"]


@dataclass(frozen=True)
class DiscoveredPlugin:
    """Stage 1: an entry point found in the group, nothing imported yet."""

    name: str
    entry_point: str  # "module:attr"
    distribution: str  # "" when the entry point has no distribution (in-process registration)
    version: str
    ep: metadata.EntryPoint | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LoadedPlugin:
    """Stage 2: the entry point's object was imported (not yet validated)."""

    discovered: DiscoveredPlugin
    cls: Any

    @property
    def name(self) -> str:
        return self.discovered.name


@dataclass(frozen=True)
class PluginRecord:
    """What ``ListRewriters`` and ``plugins list`` show for one plugin."""

    name: str
    distribution: str
    version: str
    entry_point: str
    status: Status
    error: str = ""
    options_schema: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    requires_llm: bool = False
    public_error: str = ""  # what callers see instead of ``error`` when that quotes a plugin's message

    @property
    def caller_error(self) -> str:
        """``error`` as a remote caller may see it (a plugin's own message stays in the server log)."""
        return self.public_error or self.error


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def strict_from_env() -> bool:
    """``TRACEMARK_STRICT_PLUGINS`` as a boolean (1/true/yes/on)."""
    return _truthy(os.environ.get(STRICT_ENV))


def allowlist_from_env() -> list[str] | None:
    """``TRACEMARK_PLUGINS=a,b`` as a list; ``None`` when unset or empty (everything allowed)."""
    raw = os.environ.get(ALLOWLIST_ENV, "")
    names = [part.strip() for part in raw.split(",") if part.strip()]
    return names or None


def entry_points_from_paths(
    paths: Sequence[str], group: str = ENTRY_POINT_GROUP
) -> list[metadata.EntryPoint]:
    """Entry points of ``group`` declared by the distributions (``*.dist-info``) found in ``paths`` only."""
    found: list[metadata.EntryPoint] = []
    for dist in metadata.distributions(path=[str(p) for p in paths]):
        found.extend(ep for ep in dist.entry_points if ep.group == group)
    return found


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    try:
        return dist.metadata["Name"] or "", dist.version or ""
    except Exception:  # malformed METADATA: still report the entry point
        return "", ""


def discover(entry_points: Iterable[metadata.EntryPoint] | None = None) -> list[DiscoveredPlugin]:
    """Stage 1: the plugins of the ``tracemark.rewriters`` group, deduplicated, in a stable order."""
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP)) if entry_points is None else list(entry_points)
    seen: set[tuple[str, str, str]] = set()
    found: list[DiscoveredPlugin] = []
    for ep in eps:
        if getattr(ep, "group", ENTRY_POINT_GROUP) not in (ENTRY_POINT_GROUP, None):
            continue
        dist, version = _dist_of(ep)
        key = (ep.name, ep.value, dist.lower())
        if key in seen:
            continue
        seen.add(key)
        found.append(DiscoveredPlugin(ep.name, ep.value, dist, version, ep))
    found.sort(
        key=lambda d: (d.name, d.distribution.lower() != HOST_DISTRIBUTION, d.distribution, d.entry_point)
    )
    return found


def load(plugin: DiscoveredPlugin) -> LoadedPlugin:
    """Stage 2: import the entry point's object (raises whatever the import raises)."""
    if plugin.ep is None:
        raise ImportError(f"no entry point object for {plugin.entry_point!r}")
    return LoadedPlugin(plugin, plugin.ep.load())


def _parse_version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", str(text))
    if not match:
        raise ValueError(f"api_version {text!r} is not 'major.minor'")
    return int(match.group(1)), int(match.group(2))


def api_compatible(plugin_version: str, host_version: str = API_VERSION) -> bool:
    """Same major version, and the plugin needs no newer minor version than the host provides."""
    p_major, p_minor = _parse_version(plugin_version)
    h_major, h_minor = _parse_version(host_version)
    return p_major == h_major and p_minor <= h_minor


def validate(loaded: LoadedPlugin) -> tuple[type[Rewriter], dict[str, Any]]:
    """Stage 3: check the loaded object; returns the class and its options JSON schema.

    Raises ``ValueError``/``TypeError`` with a one-line reason when the plugin is unusable.
    """
    cls, name = loaded.cls, loaded.name
    if not (inspect.isclass(cls) and issubclass(cls, Rewriter)):
        raise TypeError(
            f"{loaded.discovered.entry_point} is not a subclass of tracemark.plugins.api.Rewriter"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ()))) or "rewrite"
        raise TypeError(f"{cls.__name__} is abstract (does not implement {missing})")
    if cls.name != name:
        raise ValueError(f"entry point name {name!r} differs from {cls.__name__}.name {cls.name!r}")
    try:
        compatible = api_compatible(cls.api_version)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not compatible:
        raise ValueError(
            f"plugin API version {cls.api_version} is incompatible with tracemark's {API_VERSION}"
        )
    options = cls.Options
    if not (inspect.isclass(options) and issubclass(options, BaseModel)):
        raise TypeError(f"{cls.__name__}.Options must be a pydantic BaseModel subclass")
    try:
        schema = cls.options_schema()
        json.dumps(schema)
    except Exception as exc:
        log.warning("rewriter plugin %r: options JSON schema failed: %s", name, _one_line(exc))
        raise ValueError("options JSON schema cannot be produced (details in the server log)") from None
    return cls, schema


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RewriterRegistry:
    """The rewriters this process discovered, with a record per plugin. Thread-safe for reads.

    Build it with :meth:`discover` (entry points) or :meth:`from_classes` (in-process registration).
    """

    def __init__(self, records: Sequence[PluginRecord], classes: dict[str, type[Rewriter]]) -> None:
        self._lock = threading.Lock()
        self._records = {r.name: r for r in records if r.status == "loaded"}
        self._all = list(records)
        self._classes = dict(classes)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def discover(
        cls,
        *,
        strict: bool | None = None,
        allowlist: Sequence[str] | None = None,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
    ) -> RewriterRegistry:
        """Discover, load and validate every plugin of the group (see module docstring for policies).

        ``strict``/``allowlist`` default to ``TRACEMARK_STRICT_PLUGINS`` / ``TRACEMARK_PLUGINS``
        (``allowlist=[]`` means "no allowlist": everything enabled, whatever the environment says);
        ``entry_points`` defaults to the installed distributions' entry points.
        """
        strict = strict_from_env() if strict is None else strict
        allow = allowlist_from_env() if allowlist is None else [a.strip() for a in allowlist if a.strip()]
        allowed = None if not allow else set(allow) | ALWAYS_ALLOWED
        discovered = discover(entry_points)

        records: list[PluginRecord] = []
        classes: dict[str, type[Rewriter]] = {}

        def fail(plugin: DiscoveredPlugin, error: str, public: str = "") -> None:
            record = PluginRecord(
                plugin.name, plugin.distribution, plugin.version, plugin.entry_point, "failed", error
            )
            if public:
                record = replace(record, public_error=public)
            records.append(record)
            where = plugin.distribution or "in-process"
            log.warning("rewriter plugin %r (%s) skipped: %s", plugin.name, where, error)
            if strict:
                raise PluginLoadError(f"rewriter plugin {plugin.name!r} ({where}) failed to load: {error}")

        enabled: list[DiscoveredPlugin] = []
        for plugin in discovered:
            if allowed is not None and plugin.name not in allowed:
                records.append(
                    PluginRecord(
                        plugin.name,
                        plugin.distribution,
                        plugin.version,
                        plugin.entry_point,
                        "disabled",
                        f"not in {ALLOWLIST_ENV} allowlist",
                    )
                )
                log.info("rewriter plugin %r disabled (not in the allowlist)", plugin.name)
                continue
            enabled.append(plugin)
        if allowed is not None:
            for name in sorted(set(allow or ()) - {p.name for p in discovered}):
                log.warning("allowlisted rewriter %r was not found among installed plugins", name)

        by_name: dict[str, list[DiscoveredPlugin]] = {}
        for plugin in enabled:
            by_name.setdefault(plugin.name, []).append(plugin)

        for name, claimants in by_name.items():
            winners = claimants
            if len(claimants) > 1:
                host = [c for c in claimants if c.distribution.lower() == HOST_DISTRIBUTION]
                winners = host if len(host) == 1 else []
                for loser in claimants:
                    if loser in winners:
                        continue
                    others = ", ".join(
                        sorted(c.distribution or c.entry_point for c in claimants if c is not loser)
                    )
                    fail(loser, f"duplicate rewriter name {name!r} (also provided by {others})")
            for plugin in winners:
                if not NAME_PATTERN.match(plugin.name):
                    fail(
                        plugin,
                        f"invalid rewriter name {plugin.name!r} (use lowercase letters, digits, . _ -)",
                    )
                    continue
                try:
                    loaded = load(plugin)
                except (Exception, SystemExit) as exc:
                    # The operator sees the plugin's message; callers only an error id (see public_error).
                    error_id = uuid.uuid4().hex[:12]
                    fail(
                        plugin,
                        f"import failed: {_one_line(exc)} [error id {error_id}]",
                        public=f"import failed (error id {error_id}; details in the server log)",
                    )
                    continue
                try:
                    rewriter_cls, schema = validate(loaded)
                except (TypeError, ValueError) as exc:
                    fail(plugin, str(exc))
                    continue
                classes[name] = rewriter_cls
                records.append(
                    PluginRecord(
                        name,
                        plugin.distribution,
                        plugin.version,
                        plugin.entry_point,
                        "loaded",
                        "",
                        schema,
                        (rewriter_cls.description or "").strip(),
                        bool(rewriter_cls.requires_llm),
                    )
                )
                log.debug("rewriter plugin %r loaded from %s", name, plugin.distribution or "in-process")
        records.sort(key=lambda r: (r.name, r.status != "loaded", r.distribution))
        return cls(records, classes)

    @classmethod
    def from_classes(cls, *rewriters: type[Rewriter], strict: bool = True) -> RewriterRegistry:
        """Register rewriter classes in-process (tests, embedding); validated like entry points."""
        eps = [
            _InProcessEntryPoint(getattr(r, "name", "") or getattr(r, "__name__", "?"), r) for r in rewriters
        ]
        return cls.discover(strict=strict, allowlist=[], entry_points=eps)  # type: ignore[arg-type]

    # -- queries ----------------------------------------------------------------------------------
    @property
    def records(self) -> list[PluginRecord]:
        """One record per discovered entry point (loaded, failed or disabled), sorted by name."""
        with self._lock:
            return list(self._all)

    def names(self) -> list[str]:
        """Names of the usable (loaded) rewriters."""
        with self._lock:
            return sorted(self._classes)

    def record(self, name: str) -> PluginRecord:
        """The record of ``name`` (the loaded one when there are several); raises UnknownRewriterError."""
        with self._lock:
            if name in self._records:
                return self._records[name]
            matches = [r for r in self._all if r.name == name]
        if not matches:
            raise UnknownRewriterError(f"unknown rewriter {name!r}", name=name, status="unknown")
        return matches[0]

    def get(self, name: str) -> type[Rewriter]:
        """The class of a loaded rewriter; UnknownRewriterError says whether it is unknown/failed/disabled."""
        with self._lock:
            found = self._classes.get(name)
            if found is not None:
                return found
            matches = [r for r in self._all if r.name == name]
            available = ", ".join(sorted(self._classes)) or "none"
        if not matches:
            raise UnknownRewriterError(
                f"unknown rewriter {name!r} (available: {available})", name=name, status="unknown"
            )
        rec = matches[0]
        raise UnknownRewriterError(
            f"rewriter {name!r} is {rec.status}: {rec.caller_error}", name=name, status=rec.status
        )

    def quarantine(self, name: str, reason: str) -> None:
        """Take a loaded rewriter out of service at run time (e.g. it keeps hanging): status ``failed``."""
        with self._lock:
            if self._classes.pop(name, None) is None:
                return
            rec = self._records.pop(name)
            failed = replace(rec, status="failed", error=reason)
            self._all = [failed if r is rec else r for r in self._all]
        log.error("rewriter %r taken out of service: %s", name, reason)


class _InProcessEntryPoint:
    """Duck-typed entry point for :meth:`RewriterRegistry.from_classes`."""

    group = ENTRY_POINT_GROUP
    dist = None

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.value = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '?')}"
        self._obj = obj

    def load(self) -> Any:
        return self._obj
