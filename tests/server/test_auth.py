import stat

import pytest
from tracemark.server.auth import TokenStore, TokenStoreError, add_account


def test_tokens_file_roundtrip_stores_only_hashes(tmp_path):
    path = tmp_path / "tokens.toml"
    alice = add_account(path, "alice")
    bob = add_account(path, "bob")
    text = path.read_text()
    assert alice not in text and bob not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore.load(path)
    assert store.account_for(alice) == "alice"
    assert store.account_for(bob) == "bob"
    assert store.account_for("tm_wrong") is None
    with pytest.raises(TokenStoreError, match="already"):
        add_account(path, "alice")


def test_bad_tokens_files(tmp_path):
    with pytest.raises(TokenStoreError, match="invalid account name"):
        TokenStore({"bad name": "0" * 64})
    path = tmp_path / "t.toml"
    path.write_text('[accounts.a]\ntoken_sha256 = "xyz"\n')
    with pytest.raises(TokenStoreError, match="64 lowercase hex"):
        TokenStore.load(path)
