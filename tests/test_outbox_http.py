"""The outbox's HTTP connection (`vlmd_agent.outbox.spool.Connection`) against small real servers:
keep-alive, a connection the server closed, https, timeouts and URLs.

A stand-in server is used where vlmd cannot show the behaviour (it keeps connections open, has no
TLS); what the outbox does with vlmd's answers is in test_outbox.py, against a real `vlmd serve`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.events import completed
from tests.test_outbox import FAST, items, keys, wait_for
from vlmd_agent.outbox.spool import Connection, Outbox

TOKEN = "test-token"


class Vlmd(ThreadingHTTPServer):
    """Accepts POST /api/events like vlmd: records events, connections and headers."""

    daemon_threads = True

    def __init__(self, close_each: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.close_each = close_each  # close the connection after each answer, unannounced
        self.keys: list[str] = []
        self.connections: set[tuple[str, int]] = set()
        self.auth: set[str] = set()
        self.paths: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless closed
    server: Vlmd

    def do_POST(self) -> None:
        events = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.keys += [e["key"] for e in events]
        self.server.connections.add(self.client_address)
        self.server.auth.add(self.headers["authorization"])
        self.server.paths.add(self.path)
        body = b'{"appended": %d, "duplicates": 0}' % len(events)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.server.close_each

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(server: Vlmd) -> Iterator[Vlmd]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vlmd() -> Iterator[Vlmd]:
    with serving(Vlmd()) as server:
        yield server


def url_of(server: Vlmd, scheme: str = "http", prefix: str = "") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}{prefix}"


def test_batches_go_over_one_kept_alive_connection_with_the_token(
        tmp_path: Path, vlmd: Vlmd) -> None:
    events = items("r-alive", 50)
    with Outbox(tmp_path / "spool.db", url_of(vlmd, prefix="/vlmd/"), TOKEN, batch_max=5) as box:
        box.put_many(events)
        assert box.flush(20)
        assert box.stats().batches == 10
    assert vlmd.keys == keys(events)
    assert len(vlmd.connections) == 1
    assert vlmd.auth == {f"Bearer {TOKEN}"}
    assert vlmd.paths == {"/vlmd/api/events"}


def test_a_connection_the_server_closed_is_replaced_without_a_failed_attempt(
        tmp_path: Path) -> None:
    with serving(Vlmd(close_each=True)) as server:
        events = items("r-closed", 20)
        with Outbox(tmp_path / "spool.db", url_of(server), TOKEN, backoff=FAST) as box:
            for e in events:  # one batch each: every one finds its connection closed
                box.put(e)
                assert box.flush(10)
                time.sleep(0.01)  # the server's close has landed
            stats = box.stats()
        assert server.keys == keys(events)
        assert len(server.connections) == 20
        assert (stats.batches, stats.retries) == (20, 0)


def test_a_server_that_never_answers_times_out_and_is_retried(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        box = Outbox(tmp_path / "spool.db", url, TOKEN, timeout_s=0.2, backoff=FAST).start()
        box.put(completed("r-silent", 1))
        wait_for(lambda: box.stats().retries >= 2, timeout=10)
        assert "unreachable (TimeoutError)" in (box.stats().last_error or "")
        assert box.backlog() == 1
        box.close(flush_timeout=0)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    assert shutil.which("openssl"), "the openssl command is needed (scripts/setup.sh installs it)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def tls(server: Vlmd, cert: Path, key: Path) -> Vlmd:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def test_https_verifies_the_certificate_against_ssl_cert_file(
        tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    events = items("r-tls", 10)
    with serving(tls(Vlmd(), *certificate)) as server:
        box = Outbox(tmp_path / "untrusted.db", url_of(server, "https"), TOKEN,
                     backoff=FAST).start()
        box.put(events[0])
        wait_for(lambda: box.stats().retries >= 1, timeout=10)
        assert "unreachable (SSLCertVerificationError)" in (box.stats().last_error or "")
        box.close(flush_timeout=0)
        assert server.keys == []
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
        with Outbox(tmp_path / "trusted.db", url_of(server, "https"), TOKEN) as box:
            box.put_many(events)
            assert box.flush(20)
        assert server.keys == keys(events)
        assert server.auth == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8470", "http://", "http://127.0.0.1:99999",
                                 "127.0.0.1:8470"])
def test_a_url_that_is_not_http_host_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        Connection(url, TOKEN, 1.0)
