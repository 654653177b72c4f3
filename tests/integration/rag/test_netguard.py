"""The socket guard: non-loopback connections are refused; a whole chat session stays on loopback."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import yaml
from _runtime_ws import make_workspace
from click.testing import CliRunner

from rag.cli.main import cli
from rag.netguard import NetworkBlocked, offline

pytestmark = pytest.mark.integration


def test_guard_refuses_non_loopback_and_allows_loopback() -> None:
    original = socket.socket.connect
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[bool] = []
    t = threading.Thread(target=lambda: accepted.append(bool(server.accept())), daemon=True)
    t.start()
    with offline() as log:
        with pytest.raises(NetworkBlocked, match="10.255.255.1:80"):
            socket.create_connection(("10.255.255.1", 80), timeout=1)
        s = socket.socket()
        with pytest.raises(NetworkBlocked):
            s.connect(("93.184.216.34", 443))
        with pytest.raises(NetworkBlocked):
            s.connect_ex(("2001:db8::1", 443, 0, 0))
        s.close()
        with pytest.raises(NetworkBlocked):  # no DNS query for outside names either
            socket.getaddrinfo("example.com", 443)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(NetworkBlocked):
            u.sendto(b"x", ("8.8.8.8", 53))
        u.close()
        c = socket.create_connection(("127.0.0.1", port), timeout=5)  # loopback works
        c.close()
        assert socket.getaddrinfo("localhost", port)
    t.join(5)
    server.close()
    assert accepted == [True]
    assert log.refused[:2] == ["10.255.255.1:80", "93.184.216.34:443"] and len(log.refused) == 5
    assert f"127.0.0.1:{port}" in log.allowed
    assert socket.socket.connect is original  # uninstalled afterwards


def test_chat_session_opens_no_non_loopback_connection(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    script = "Which TCP port does the Kestrel KX-7 relay listen on by default?\n/model base\n/sources\nWhat is E-417?\n/quit\n"
    with offline() as log:
        res = CliRunner().invoke(cli, ["chat", "--model", "base", "--offline", "--config", str(root / "raftsmith.yaml")], input=script)
    assert res.exit_code == 0, res.output
    assert res.stdout.count("docs/") >= 1 and "switched to base" in res.stdout
    assert log.refused == [], log.refused  # nothing tried to leave the machine


def test_offline_ask_to_a_remote_server_is_refused_by_the_guard(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    cfg = yaml.safe_load((root / "raftsmith.yaml").read_text())
    cfg["chat"].update({"offline": True, "backend": "openai", "base_url": "http://10.255.255.1:9/v1"})
    (root / "raftsmith.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["ask", "hello?", "--no-rag", "--model", "base", "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 1
    assert "refused by the network guard" in res.output and "10.255.255.1:9" in res.output
