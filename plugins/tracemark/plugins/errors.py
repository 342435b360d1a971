"""Domain exceptions of the plugin subsystem (one-line messages). Each subclasses the foundation error
kind the server maps to its gRPC code (``tracemark.foundation.errors``) and keeps its builtin base.

=========================  ==========================  ================================================
exception                  gRPC status                 raised when
=========================  ==========================  ================================================
``PluginLoadError``        (startup failure)           strict discovery met a broken plugin
``UnknownRewriterError``   NOT_FOUND                   a pipeline names an unknown/failed/disabled plugin
``InvalidRewriterOptions`` INVALID_ARGUMENT            options or the pipeline itself are invalid
``RewriterFailed``         INTERNAL                    a step raised and the policy is ``on_error="raise"``
``RewriterTimeout``        DEADLINE_EXCEEDED           a step ran past its limit and policy is ``raise``
=========================  ==========================  ================================================
"""

from __future__ import annotations

from tracemark.foundation.errors import DeadlineExceeded, Failed, InvalidInput, NotFound


class PluginError(Exception):
    """Base class of every plugin-subsystem error."""


class PluginLoadError(PluginError, Failed):
    """A plugin could not be loaded and strict mode (``TRACEMARK_STRICT_PLUGINS=1``) is on."""


class UnknownRewriterError(PluginError, NotFound):
    """The named rewriter does not exist, failed to load, or is disabled (``status`` says which)."""

    def __init__(self, message: str, *, name: str = "", status: str = "unknown") -> None:
        super().__init__(message)
        self.name = name
        self.status = status


class InvalidRewriterOptions(PluginError, InvalidInput):
    """Options for a rewriter (or the pipeline specification) are invalid."""


class RewriterFailed(PluginError, Failed):
    """A rewriter step raised (surfaced only with ``on_error="raise"``)."""

    def __init__(self, message: str, *, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class RewriterTimeout(PluginError, DeadlineExceeded):
    """A rewriter step exceeded its time limit (surfaced only with ``on_error="raise"``)."""

    def __init__(self, message: str, *, name: str = "") -> None:
        super().__init__(message)
        self.name = name
