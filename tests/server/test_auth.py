import stat

import pytest
from tracemark.cli.main import app
from tracemark.server import auth
from tracemark.server.auth import TokenStore, TokenStoreError, add_account, hash_token, required_role
from typer.testing import CliRunner


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


def test_roles_are_stored_and_a_missing_role_reads_as_customer(tmp_path):
    path = tmp_path / "tokens.toml"
    audit = add_account(path, "audit", "compliance")
    root = add_account(path, "root", "admin")
    text = path.read_text()
    assert 'role = "compliance"' in text and 'role = "admin"' in text
    # a file written before roles existed: no role line -> customer (least privilege)
    path.write_text(text + f'\n[accounts.legacy]\ntoken_sha256 = "{hash_token("tm_legacy")}"\n')
    store = TokenStore.load(path)
    assert [store.role_of(store.account_for(t)) for t in (audit, root, "tm_legacy")] == [
        "compliance",
        "admin",
        "customer",
    ]
    assert store.accounts_with_role("customer") == ["legacy"]


def test_token_store_roles_from_code():
    store = TokenStore({"a": hash_token("ta"), "b": hash_token("tb")}, roles={"b": "compliance"})
    assert (store.role_of("a"), store.role_of("b")) == ("customer", "compliance")
    store = TokenStore({"c": {"token_sha256": hash_token("tc"), "role": "admin"}})
    assert store.role_of("c") == "admin"
    with pytest.raises(TokenStoreError, match="role must be one of"):
        TokenStore({"a": hash_token("ta")}, roles={"a": "root"})
    with pytest.raises(TokenStoreError, match="unknown account"):
        TokenStore({"a": hash_token("ta")}, roles={"nobody": "admin"})


def test_bad_role_in_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(f'[accounts.a]\ntoken_sha256 = "{"0" * 64}"\nrole = "superuser"\n')
    with pytest.raises(TokenStoreError, match="role must be one of"):
        TokenStore.load(path)


@pytest.mark.parametrize(
    "method, role",
    [
        ("/tracemark.v1.TeacherService/Generate", "customer"),
        ("/tracemark.v1.RewriteService/Rewrite", "customer"),
        ("/tracemark.v1.ForensicsService/Investigate", "compliance"),
        ("/tracemark.v1.ForensicsService/GetReport", "compliance"),
        ("/tracemark.v1.ForensicsService/VerifyReport", "compliance"),
        ("/tracemark.v1.UnknownService/Do", None),
    ],
)
def test_required_role(method, role):
    assert required_role(method) == role


def test_accounts_cli_add_with_role_and_list(tmp_path):
    runner, path = CliRunner(), str(tmp_path / "tokens.toml")
    added = runner.invoke(app, ["accounts", "add", "audit", "--role", "compliance", "--tokens-file", path])
    assert added.exit_code == 0 and added.stdout.strip().startswith("tm_")
    assert runner.invoke(app, ["accounts", "add", "alice", "--tokens-file", path]).exit_code == 0
    bad = runner.invoke(app, ["accounts", "add", "eve", "--role", "root", "--tokens-file", path])
    assert bad.exit_code == 2
    listing = runner.invoke(app, ["accounts", "list", "--tokens-file", path])
    assert listing.stdout.splitlines() == ["alice\tcustomer", "audit\tcompliance"]
    assert TokenStore.load(tmp_path / "tokens.toml").account_for(added.stdout.strip()) == "audit"


def test_rejection_logging_is_rate_limited(caplog, monkeypatch):
    from tracemark.foundation import ratelimit

    clock = iter([10.0] * 1000 + [11.5] * 10)
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: next(clock))
    throttled = ratelimit.RateLimitedLog(auth.log, per_window=5, window_s=1.0)
    with caplog.at_level("INFO", logger="tracemark.server.auth"):
        for _ in range(1000):
            throttled.info("rejected call to %s: unknown token", "/x")
        throttled.info("rejected call to %s: unknown token", "/x")  # the next second
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("rejected call to /x: unknown token") == 5
    assert lines[-1] == "rejected call to /x: unknown token (995 more held back by the rate limit)"
