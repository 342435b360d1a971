"""Pre-registration: what an investigation will test, written to the transparency log before any query.

The registration entry names the suspect (its identity: weights, tokenizer and chat-template hashes), the
accounts to score and the size of the family they are corrected over, every delivered pair to score (by
public id, with the log entry of its key commitment), the parameters and, with the distributional channel,
its spec, the keys to test (by commitment entry), the public prompts and sampling settings. Its entry hash
is the investigation's public **beacon**: the only randomness in the test (decoys for tokenizers that merge
digits, sampling seeds, the channel's decoy keys) derives from it, so it is fixed before the first query
and cannot be chosen without leaving another registration in the log. Reports list every earlier
registration for the same suspect.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tracemark.forensics.investigate.family import Family, Member
from tracemark.forensics.investigate.params import DETECTOR_VERSION, InvestigationParams
from tracemark.forensics.tlog import LogEntryView, append_entry, find_entries

REGISTRATION_FORMAT = "tracemark-registration/1"


def suspect_key(identity: dict, spec: str) -> str:
    """What makes two registrations "the same suspect": the weights hash, else the endpoint/spec."""
    weights = identity.get("weights_sha256")
    if weights:
        return f"weights:{weights}"
    return f"{identity.get('kind', 'suspect')}:{identity.get('endpoint') or identity.get('address') or spec}"


def accounts_digest(names: list[str]) -> str:
    """SHA-256 of the sorted account names, one per line (commits to the family without listing it twice)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def register(
    engine: Any,
    *,
    run: Any,
    params: InvestigationParams,
    family: Family,
    members: dict[str, Member],
    suspects: int,
) -> LogEntryView:
    """Append ``run``'s registration (see the module doc) and return the log entry."""
    schemes = {}
    pairs = []
    for name, member in members.items():
        for pair in member.pairs:
            scheme = member.scheme_of(pair)
            schemes[scheme.digest()] = scheme.as_dict()
            pairs.append(
                {
                    "account": name,
                    "key_version": pair.key_version,
                    "index": pair.index,
                    "pair_id": pair.pair_id,
                    "scheme": scheme.digest(),
                    "key_entry": member.key_entries[pair.key_version],
                }
            )
    body = {
        "format": REGISTRATION_FORMAT,
        "detector": DETECTOR_VERSION,
        "investigation_id": run.investigation_id,
        "suspect": run.spec,
        "suspect_key": suspect_key(run.identity, run.spec),
        "suspect_identity": json.loads(json.dumps(run.identity, default=str)),
        "mode": run.mode,
        "parameters": params.public(),
        "family": {
            "accounts": family.size,
            "suspects": suspects,
            "size": family.size * suspects,
            "accounts_sha256": accounts_digest(list(family.members)),
        },
        "accounts": sorted(members),
        "pairs": pairs,
        "schemes": schemes,
    }
    plan = getattr(run, "channel_plan", None)
    if plan is not None:  # the channel's spec, keys (by commitment entry), prompts and settings
        body["channel"] = plan.public(run.channel_mode)
    subject = f"investigation:{run.investigation_id}"
    return append_entry(engine, kind="registration", subject=subject, body=body)


def prior_registrations(engine: Any, entry: LogEntryView) -> list[dict]:
    """Every registration for the same suspect logged before ``entry`` (oldest first)."""
    key = entry.body.get("suspect_key")
    out = []
    for e in find_entries(engine, kind="registration"):
        if e.seq >= entry.seq or e.body.get("suspect_key") != key:
            continue
        out.append(
            {
                "seq": e.seq,
                "entry_hash": e.entry_hash,
                "logged_at": e.logged_at,
                "investigation_id": e.body.get("investigation_id"),
                "mode": e.body.get("mode"),
                "accounts": len(e.body.get("accounts", [])),
            }
        )
    return out
