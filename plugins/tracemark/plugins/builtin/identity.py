"""The identity rewriter: returns the trace unchanged (useful as a control and in tests)."""

from __future__ import annotations

from tracemark.plugins.api import RewriteContext, Rewriter


class IdentityRewriter(Rewriter):
    name = "identity"
    description = "Returns the trace unchanged (no protection)."

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        return trace
