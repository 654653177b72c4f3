"""Key lookup order, keyring failures and hangs, and the keys CLI (with an in-memory keyring)."""

from __future__ import annotations

import time

import keyring
import pytest
from click.testing import CliRunner
from keyring_double import MemoryKeyring

from rag import secrets
from rag.cli.main import cli
from rag.errors import KeyringUnavailable


class HangingKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        time.sleep(30)
        return None


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown")


@pytest.fixture
def mem() -> MemoryKeyring:
    old = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    yield kr
    keyring.set_keyring(old)


def test_lookup_order_explicit_keyring_env(mem: MemoryKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "from-env")
    assert secrets.get_key("openrouter") == "from-env"
    secrets.set_key("openrouter", "from-keyring")
    assert mem.store[("raftsmith", "openrouter")] == "from-keyring"
    assert secrets.get_key("openrouter") == "from-keyring"
    assert secrets.get_key("openrouter", explicit="explicit") == "explicit"
    assert secrets.delete_key("openrouter") and not secrets.delete_key("openrouter")
    monkeypatch.delenv("OPENROUTER_API_KEY")
    with pytest.raises(KeyringUnavailable, match="raftsmith keys set openrouter"):
        secrets.get_key("openrouter")


def test_null_backend_refuses_to_store_and_names_the_fix() -> None:
    # the suite's isolation uses keyring's null backend: it would drop the key silently
    with pytest.raises(KeyringUnavailable) as exc:
        secrets.set_key("openai", "sk-test-value")
    assert "keyrings.alt" in str(exc.value) and "OPENAI_API_KEY" in str(exc.value)
    assert "sk-test-value" not in str(exc.value)


def test_hanging_keyring_times_out_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    old = keyring.get_keyring()
    keyring.set_keyring(HangingKeyring())
    monkeypatch.setattr(secrets, "KEYRING_TIMEOUT_S", 0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyringUnavailable, match="did not answer") as exc:
            secrets.get_key("openrouter")
        assert time.monotonic() - t0 < 3 and "OPENROUTER_API_KEY" in str(exc.value)
        monkeypatch.setenv("OPENROUTER_API_KEY", "env-wins")
        assert secrets.get_key("openrouter") == "env-wins"  # an explicit env var is not a silent fallback
    finally:
        keyring.set_keyring(old)


def test_broken_keyring_names_the_fix() -> None:
    old = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    try:
        with pytest.raises(KeyringUnavailable, match="keyring failed"):
            secrets.get_key("openai")
        assert secrets.list_keys(["openai"])[0]["keyring"] is None
    finally:
        keyring.set_keyring(old)


def test_keys_cli_set_list_delete_never_echoes(mem: MemoryKeyring) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "set", "openrouter"], input="sk-or-canary-123456\n")
    assert r.exit_code == 0, r.output
    assert "sk-or-canary-123456" not in r.output and mem.store[("raftsmith", "openrouter")] == "sk-or-canary-123456"
    r = runner.invoke(cli, ["keys", "list"])
    assert r.exit_code == 0 and "openrouter" in r.output and "keyring" in r.output
    assert "sk-or-canary" not in r.output
    r = runner.invoke(cli, ["keys", "list", "--json"])
    assert '"keyring": true' in r.output and "sk-or" not in r.output
    r = runner.invoke(cli, ["keys", "delete", "openrouter"])
    assert r.exit_code == 0 and ("raftsmith", "openrouter") not in mem.store


def test_keys_cli_reports_unusable_keyring_as_user_error() -> None:
    r = CliRunner().invoke(cli, ["keys", "set", "openai"], input="sk-x-1234567890\n")
    assert r.exit_code == 1 and "keyrings.alt" in r.output and "sk-x-1234567890" not in r.output
