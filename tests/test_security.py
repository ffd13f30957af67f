"""Security defaults: the token guards writes (and reads when asked), SQL never comes from a
request, vlmd binds loopback and warns when exposed without a chosen token, sizes are capped."""

from __future__ import annotations

import ast
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from starlette.requests import Request

from tests.conftest import TOKEN, daemon_config
from tests.events import completed, started, submitted
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.config import Config
from vlmd.daemon import datasette
from vlmd.daemon.serve import Daemon, is_loopback, serve, warn_if_exposed
from vlmd.tokens import Tokens, mint
from vlmd.web import auth
from vlmd.web.auth import Auth

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"authorization": f"Bearer {TOKEN}"}
READ_TOKEN = "test-read-token"
READS = ["/api/runs", "/api/runs/r1", "/api/runs/r1/items", "/api/runs/r1/answers.csv",
         "/api/runs/r1/state", "/api/events", "/metrics"]


@pytest.fixture
async def locked(tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Daemon]:
    """A daemon with ``server.read_token = true`` (the read token `READ_TOKEN`) and one run in
    its log."""
    monkeypatch.setenv("VLMD_READ_TOKEN", READ_TOKEN)
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db", read_token=True))
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        r = await c.post("/api/events", json=[submitted("r1"), started("r1"), completed("r1", 1)])
        assert r.status_code == 200
    yield d
    d.shutdown.set()


def _request(header: str | None) -> Request:
    headers = [(b"authorization", header.encode("latin-1"))] if header is not None else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers,
                    "query_string": b""})


def test_the_token_is_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: every check goes through `hmac.compare_digest`, for right and wrong."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module vlmd.tokens calls it through
    checker = Auth(Tokens(TOKEN, READ_TOKEN))
    checker.authorize(_request(f"Bearer {TOKEN}"))
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"bearer {TOKEN[:-1]}"):
        with pytest.raises(auth.ApiError) as err:
            checker.authorize(_request(wrong))
        assert err.value.status == 401
    t, r = TOKEN.encode(), READ_TOKEN.encode()
    assert calls == [(t, t), (b"nope", t), (b"nope", r), (t + b"x", t), (t + b"x", r),
                     (t[:-1], t), (t[:-1], r)]
    calls.clear()
    forged = mint("another secret", "r1")
    with pytest.raises(auth.ApiError):
        checker.authorize_events(_request(f"Bearer {forged}"))
    mac = forged.rpartition(".")[2].encode()
    assert calls[:2] == [(forged.encode(), t), (forged.encode(), r)]
    assert calls[2][0] == mac and calls[2][1] != mac and len(calls) == 3
    with pytest.raises(auth.ApiError, match="missing token"):
        checker.authorize(_request(None))


async def test_reads_are_open_by_default_and_writes_are_not(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        assert (await c.get("/api/runs")).status_code == 200
        assert (await c.get("/api/events")).status_code == 200
        assert (await c.post("/api/events", json=[submitted("r1")])).status_code == 401
        assert (await c.post("/api/runs", json={})).status_code == 401
        assert (await c.post("/api/runs/r1/cancel")).status_code == 401
    assert daemon.live.log.count() == 0


async def test_read_token_puts_every_read_behind_the_token(locked: Daemon) -> None:
    async with httpx.AsyncClient(base_url=locked.url) as anon:
        for path in READS:
            r = await anon.get(path)
            assert r.status_code == 401, path
            assert "missing token" in r.json()["error"]
            assert (await anon.get(path, headers={"authorization": "Bearer no"})
                    ).status_code == 401
        health = (await anon.get("/healthz")).json()
        assert health == {"ok": True, "write_error": None}  # probes still work, no details
    for token in (TOKEN, READ_TOKEN):
        async with httpx.AsyncClient(base_url=locked.url,
                                     headers={"authorization": f"Bearer {token}"}) as c:
            for path in READS:
                assert (await c.get(path)).status_code == 200, path
            assert (await c.get("/healthz")).json()["runs"] == 1


async def test_the_dashboards_static_files_stay_public(locked: Daemon) -> None:
    async with httpx.AsyncClient(base_url=locked.url) as anon:
        for path in ("/", "/index.html", "/run.html", "/style.css", "/js/feed.js"):
            r = await anon.get(path)
            assert r.status_code == 200, path


def _ws(d: Daemon, query: str) -> str:
    return d.url.replace("http://", "ws://") + "/api/feed" + query


async def test_read_token_guards_the_feed_which_accepts_a_token_query(locked: Daemon) -> None:
    for query in ("?after=0", f"?after=0&token={READ_TOKEN}x", "?after=0&token=",
                  f"?after=0&token={TOKEN}"):  # the write token never in a URL
        async with open_ws(_ws(locked, query)) as ws:
            with pytest.raises(Closed) as closed:
                await ws.get_message()
        assert closed.value.code == 1008
        assert "token" in closed.value.reason
    async with open_ws(_ws(locked, f"?after=0&token={READ_TOKEN}")) as ws:
        backlog = await ws.get_message()
    assert '"seq":3' in backlog
    for path in ("/api/replay?run=r1", "/api/state"):
        async with open_ws(locked.url.replace("http://", "ws://") + path) as ws:
            with pytest.raises(Closed) as closed:
                await ws.get_message()
        assert closed.value.code == 1008 and "token" in closed.value.reason, path
    async with open_ws(locked.url.replace("http://", "ws://") +
                       f"/api/state?token={READ_TOKEN}") as ws:
        assert '"run":"r1"' in await ws.get_message()


async def test_an_oversized_websocket_frame_closes_that_client_and_vlmd_serves_on(
        daemon: Daemon) -> None:
    """hypercorn's websocket_max_message_size (1 MiB): a bigger frame ends that connection."""
    async with open_ws(_ws(daemon, "?after=0")) as ws:
        from wsproto.events import TextMessage
        await ws.stream.send_all(ws.ws.send(TextMessage(data="x" * (2 << 20))))
        with pytest.raises(Closed) as closed:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
    assert closed.value.code in (1009, 1006)
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        assert (await c.get("/healthz")).json()["ok"] is True
        assert (await c.post("/api/events", json=[submitted("r9")])).status_code == 200
    async with open_ws(_ws(daemon, "?after=0")) as ws:
        assert '"run":"r9"' in await ws.get_message()


async def test_request_bodies_are_capped(tmp_path: Path, nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, daemon_config(tmp_path / "vlmd.db", max_body_mb=0.01))
    async with httpx.AsyncClient(base_url=d.url, headers=AUTH) as c:
        r = await c.post("/api/events", json=[completed("r1", 1, question="q" * 20_000)])
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    assert d.live.log.count() == 0
    d.shutdown.set()


# ---- SQL only from constants ------------------------------------------------------------

# Every call site whose SQL is not one literal string, and why that is still constant SQL.
NON_LITERAL_SQL = {
    ("log.py", "open"): "PRAGMA synchronous = {synchronous}, checked against SYNCHRONOUS first",
    ("log.py", "read"): "joined from literal fragments; request values are only ? parameters",
    ("migrations.py", "_migrations"): "the module's own ordered MIGRATIONS steps",
    ("migrations.py", "apply"): "the module's own ordered MIGRATIONS steps",
}


def _sql_calls() -> list[tuple[str, str, ast.expr]]:
    """(file, enclosing function, first argument) of every .execute/.executemany/
    .executescript call in vlmd/."""
    found = []
    for path in sorted((ROOT / "vlmd").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("execute", "executemany", "executescript")
                        and node.args):
                    found.append((path.name, fn.name, node.args[0]))
    return found


def test_sql_in_vlmd_is_constant_text_never_built_from_a_request() -> None:
    calls = _sql_calls()
    assert len(calls) > 10
    non_literal = {(f, fn) for f, fn, arg in calls
                   if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str))}
    assert non_literal == set(NON_LITERAL_SQL), non_literal ^ set(NON_LITERAL_SQL)


def test_the_composed_read_query_binds_every_request_value() -> None:
    """`EventLog.read` builds its WHERE from fixed fragments: no f-string holds a value."""
    source = (ROOT / "vlmd" / "store" / "log.py").read_text()
    read = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef) and n.name == "read")
    formatted = [n for n in ast.walk(read) if isinstance(n, ast.JoinedStr)]
    assert len(formatted) == 1  # f"kind IN ({', '.join('?' * len(exact))})": placeholders only
    assert "'?' * len(exact)" in ast.unparse(formatted[0])


# ---- binding ----------------------------------------------------------------------------

def test_vlmd_and_datasette_bind_loopback_by_default() -> None:
    assert Config().server.host == "127.0.0.1"
    assert is_loopback(Config().server.host)
    cmd = datasette.command(Path("vlmd.db"), 8471, Path("m.json"))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False),
    ("vlmd.example.org", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_warns_of_open_reads_and_of_an_unchosen_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.delenv("VLMD_TOKEN", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    base = Config().replace(log={"path": str(tmp_path / "vlmd.db")})
    with caplog.at_level(logging.WARNING, logger="vlmd"):
        assert warn_if_exposed(base.replace(server={"host": "0.0.0.0"})) == 2
        assert warn_if_exposed(base.replace(server={"host": "127.0.0.1"})) == 0
        caplog.clear()
        # a chosen write token leaves the reads open: that is said too
        assert warn_if_exposed(base.replace(server={"host": "0.0.0.0", "token": "chosen"})
                               ) == 1
        [reads] = [r.getMessage() for r in caplog.records]
        assert "0.0.0.0" in reads and "reads open" in reads and "server.read_token" in reads
        assert warn_if_exposed(base.replace(server={"host": "0.0.0.0", "token": "chosen",
                                                    "read_token": True})) == 0
        caplog.clear()
        monkeypatch.setenv("VLMD_TOKEN", "from-env")
        assert warn_if_exposed(base.replace(server={"host": "::", "read_token": True})) == 0
        assert warn_if_exposed(base.replace(server={"host": "10.0.0.5", "read_token": True},
                                            )) == 0
        monkeypatch.delenv("VLMD_TOKEN")
        assert warn_if_exposed(base.replace(server={"host": "::", "read_token": True})) == 1
    [token] = [r.getMessage() for r in caplog.records]
    assert "::" in token and "server.token" in token


async def test_serve_logs_the_warning_when_bound_to_all_addresses(
        tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("VLMD_TOKEN", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = daemon_config(tmp_path / "vlmd.db", host="0.0.0.0", token="")
    with caplog.at_level(logging.WARNING, logger="vlmd"):
        d: Daemon = await nursery.start(serve, config)
    assert any("not loopback" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "vlmd.token").stat().st_mode & 0o777 == 0o600
    d.shutdown.set()
