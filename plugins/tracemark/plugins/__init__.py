"""Rewriter plugin API, loader, pipeline and built-in rewriters (import as ``tracemark.plugins``)."""

from tracemark.plugins.api import (
    API_VERSION,
    ENTRY_POINT_GROUP,
    IssueCounts,
    LLMBackend,
    RewriteContext,
    Rewriter,
    RewriterError,
    SignatureService,
    WatermarkPair,
    WatermarkPolicy,
)
from tracemark.plugins.errors import (
    InvalidRewriterOptions,
    PluginError,
    PluginLoadError,
    RewriterFailed,
    RewriterTimeout,
    UnknownRewriterError,
)

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "InvalidRewriterOptions",
    "IssueCounts",
    "LLMBackend",
    "PluginError",
    "PluginLoadError",
    "RewriteContext",
    "Rewriter",
    "RewriterError",
    "RewriterFailed",
    "RewriterTimeout",
    "SignatureService",
    "UnknownRewriterError",
    "WatermarkPair",
    "WatermarkPolicy",
]
