"""Master secret: sources, file mode, versioning/rotation, derivations, no secret in public output."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
from tracemark.forensics.keys import (
    InsecureKeyFile,
    MasterKeyError,
    MasterKeyNotFound,
    MasterSecret,
    load_public_key,
    public_key_id,
)


def _secret_hexes(path) -> list[str]:
    body = json.loads(path.read_text())
    return [v["secret"] for v in body["versions"].values()]


def test_generated_on_first_use_with_mode_0600(key_file):
    assert not key_file.exists()
    m = MasterSecret.load(path=key_file)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert m.versions == [1] and m.current_version == 1
    again = MasterSecret.load(path=key_file)
    assert again.account_key("acme") == m.account_key("acme")


def test_default_location_is_user_data_dir(tmp_path, monkeypatch, clean_key_env):
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "home"))
    m = MasterSecret.load()
    assert m.path == tmp_path / "home" / "master.key"


def test_create_false_raises_not_found(key_file):
    with pytest.raises(MasterKeyNotFound, match="tracemark keys create"):
        MasterSecret.load(path=key_file, create=False)


def test_create_refuses_existing(key_file):
    MasterSecret.create(path=key_file)
    with pytest.raises(MasterKeyError, match="already exists"):
        MasterSecret.create(path=key_file)


def test_world_readable_file_refused_unless_allowed(key_file, monkeypatch):
    MasterSecret.load(path=key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        MasterSecret.load(path=key_file)
    monkeypatch.setenv("TRACEMARK_ALLOW_INSECURE_KEY_FILE", "1")
    with pytest.warns(UserWarning, match="readable or writable by others"):
        MasterSecret.load(path=key_file)


def test_env_hex_takes_precedence_and_cannot_rotate(key_file, monkeypatch):
    MasterSecret.load(path=key_file)
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", "ab" * 32 + "," + "cd" * 32)
    m = MasterSecret.load(path=key_file)
    assert m.source == "env:TRACEMARK_MASTER_KEY" and m.versions == [1, 2] and m.path is None
    assert m.account_key("a", version=1) != m.account_key("a", version=2)
    with pytest.raises(MasterKeyError, match="cannot rotate"):
        m.rotate()


@pytest.mark.parametrize("value, message", [("zz" * 32, "not valid hex"), ("ab" * 16, "too short")])
def test_env_hex_validated(monkeypatch, clean_key_env, value, message):
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", value)
    with pytest.raises(MasterKeyError, match=message) as info:
        MasterSecret.load()
    assert value not in str(info.value)


def test_env_key_file_and_raw_hex_file(tmp_path, monkeypatch, clean_key_env):
    raw = tmp_path / "mounted-secret"
    raw.write_text("11" * 32 + "\n")
    raw.chmod(0o600)
    monkeypatch.setenv("TRACEMARK_MASTER_KEY_FILE", str(raw))
    m = MasterSecret.load(path=tmp_path / "ignored.key")
    assert m.path == raw and m.versions == [1]
    monkeypatch.delenv("TRACEMARK_MASTER_KEY_FILE")
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", "11" * 32)
    assert MasterSecret.load().account_key("x") == m.account_key("x")


@pytest.mark.parametrize(
    "content", ["", "{not json", '{"format": "other"}', '{"format": "tracemark-master-key/1"}']
)
def test_malformed_files(key_file, content):
    key_file.parent.mkdir(parents=True)
    key_file.write_text(content)
    key_file.chmod(0o600)
    with pytest.raises(MasterKeyError):
        MasterSecret.load(path=key_file)


def test_rotate_keeps_old_versions(key_file):
    m = MasterSecret.load(path=key_file)
    k1 = m.account_key("acme")
    fp1 = m.fingerprint(1)
    assert m.rotate() == 2
    assert m.versions == [1, 2] and m.current_version == 2
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    reloaded = MasterSecret.load(path=key_file)
    assert reloaded.versions == [1, 2]
    assert reloaded.account_key("acme", version=1) == k1
    assert reloaded.account_key("acme") != k1
    assert reloaded.fingerprint(1) == fp1 != reloaded.fingerprint(2)
    assert reloaded.key_id(1) != reloaded.key_id(2)
    assert set(reloaded.public_keys()) == {reloaded.key_id(1), reloaded.key_id(2)}
    assert len(_secret_hexes(key_file)) == 2
    with pytest.raises(MasterKeyError, match="unknown key version 7"):
        reloaded.account_key("acme", version=7)


def test_account_keys_differ_and_are_deterministic(master):
    keys = {master.account_key(f"acct-{i}") for i in range(50)}
    assert len(keys) == 50
    assert master.account_key("acct-1") == master.account_key("acct-1")
    assert len(master.account_key("acct-1")) == 32
    with pytest.raises(MasterKeyError):
        master.account_key("")


def test_signing_key_deterministic_and_pem_roundtrip(master, key_file):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = master.signing_key().sign(b"hello")
    again = MasterSecret.load(path=key_file)
    again.signing_public_key().verify(sig, b"hello")
    pub = load_public_key(again.signing_public_key_pem())
    assert isinstance(pub, Ed25519PublicKey)
    assert public_key_id(pub) == master.key_id()
    with pytest.raises(MasterKeyError):
        load_public_key("not a pem")


def test_no_secret_in_repr_public_info_or_pickle(master, key_file):
    secrets = _secret_hexes(key_file)
    shown = repr(master) + str(master) + json.dumps(master.public_info())
    for s in secrets:
        assert s not in shown
        assert s[:16] not in shown
    assert master.account_key("a").hex() not in shown
    info = master.public_info()
    assert info["current_version"] == 1
    assert set(info["versions"][0]) == {"version", "fingerprint", "created_at", "signing_key_id"}
    with pytest.raises(TypeError):
        pickle.dumps(master)
