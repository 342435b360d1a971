"""A tracemark server on localhost for the attack suite: fresh ledger and master key in a work folder,
K harvesting accounts with their own tokens, a compliance token for investigations.

Tokens are generated here (``new_token``), held in memory only and never written or printed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracemark.forensics.keys import MasterSecret
from tracemark.foundation.channel import ChannelSpec
from tracemark.foundation.problems import Problem
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token, new_token
from tracemark.server.config import load_settings
from tracemark.server.teacher.reference import ReferenceTeacher

INVESTIGATOR = "compliance-team"


class SelfHostedServer:
    """Start with ``with SelfHostedServer(...) as s:``; ``s.address``, ``s.tokens``, ``s.master``."""

    def __init__(
        self,
        workdir: Path,
        *,
        accounts: Sequence[str],
        teacher: str,
        problems: Sequence[Problem],
        settings_file: Path | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.accounts = list(accounts)
        self.tokens = {a: new_token() for a in [*self.accounts, INVESTIGATOR]}
        base: dict[str, dict[str, Any]] = {
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"max_queue": 1024},
            "ledger": {
                "url": f"sqlite:///{self.workdir / 'ledger.db'}",
                "master_key_file": self.workdir / "master.key",
            },
            "forensics": {"model_roots": [self.workdir / "students"]},
        }
        if teacher in ("embedded", "tiny"):
            base["teacher"].update({"backend": teacher, "quantization": "none", "device": "cpu"})
        for section, values in (overrides or {}).items():
            base.setdefault(section, {}).update(copy.deepcopy(values))
        self.settings = load_settings(settings_file, overrides=base)
        self._teacher = (
            ReferenceTeacher({p.question: p.solution for p in problems}) if teacher == "reference" else None
        )
        self.server: TracemarkServer | None = None
        self.address = ""

    def __enter__(self) -> SelfHostedServer:
        (self.workdir / "students").mkdir(parents=True, exist_ok=True)
        store = TokenStore(
            {a: hash_token(t) for a, t in self.tokens.items()}, roles={INVESTIGATOR: "compliance"}
        )
        self.server = TracemarkServer(self.settings, teacher=self._teacher, tokens=store)
        port = self.server.start()
        self.server.wait_ready(900)
        self.address = f"127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop(grace=1)

    @property
    def runtime(self):
        return self.server.runtime

    @property
    def master(self) -> MasterSecret:
        return self.runtime.master

    @property
    def channel_spec(self) -> ChannelSpec | None:
        """The channel parameters the teacher decodes with (``None``: the teacher carries no channel)."""
        return getattr(self.runtime, "channel_spec", None)

    @property
    def teacher_info(self) -> dict:
        info = self.runtime.teacher.info
        return {"model_id": info.model_id, "backend": info.backend, "channel": info.extra.get("channel", "")}
