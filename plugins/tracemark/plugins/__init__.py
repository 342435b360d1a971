"""Rewriter plugin API, loader and built-in rewriters (import as ``tracemark.plugins``)."""

from tracemark.plugins.api import API_VERSION, LLMBackend, RewriteContext, Rewriter, RewriterError

__all__ = ["API_VERSION", "LLMBackend", "RewriteContext", "Rewriter", "RewriterError"]
