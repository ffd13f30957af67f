"""Host and Origin checks, vlmd's and its Datasette's: a page on another origin, or a page whose
DNS name was rebound to vlmd's address, reads nothing (checked in a real Chromium too)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from playwright.sync_api import sync_playwright

from tests.conftest import TOKEN, DaemonProcess, daemon_config, start_daemon
from tests.events import completed, submitted
from tests.ports import free_port
from vlmd.cli.wsclient import Closed, open_ws
from vlmd.daemon.serve import Daemon, serve
from vlmd.web.origins import Origins

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = pytest.mark.filterwarnings(  # start_daemon's stderr file object (see test_dashboard)
    r"ignore:Exception ignored in. <_io.FileIO name=.*\.stderr'"
    ":pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8470", True), ("localhost:8470", True), ("LOCALHOST", True), ("[::1]:8470", True),
    ("10.1.2.3:8470", True), ("dash.localhost:8470", True), ("vlmd.example.org", True),
    ("a.lab.example.org:1", True), ("lab.example.org", True),
    ("evil.example.com:8470", False), ("vlmd.example.org.evil.com", False), ("", False),
    ("127.0.0.1.nip.io:8470", False), ("xlab.example.org", False)])
def test_host_names(host: str, ok: bool) -> None:
    assert Origins(["vlmd.example.org", ".lab.example.org"]).host_allowed(host) is ok


def test_origins() -> None:
    origins = Origins([], ["https://dash.example.org/"])
    assert origins.origin_allowed("http://127.0.0.1:8470", "127.0.0.1:8470")
    assert origins.origin_allowed("https://dash.example.org", "127.0.0.1:8470")
    for other in ("http://127.0.0.1:9999", "http://localhost:8470", "null", "file://",
                  "http://evil.example.com"):
        assert not origins.origin_allowed(other, "127.0.0.1:8470"), other


async def test_vlmd_refuses_other_host_names_and_origins(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        assert (await c.get("/api/runs")).status_code == 200
        rebound = await c.get("/api/runs", headers={"host": "attacker.example:8470"})
        assert rebound.status_code == 403
        assert "does not answer to the name 'attacker.example'" in rebound.json()["error"]
        assert (await c.get("/", headers={"host": "attacker.example"})).status_code == 403
        page = await c.post("/api/events", json=[submitted("r1")],
                            headers={"origin": "http://attacker.example",
                                     "authorization": f"Bearer {TOKEN}"})
        assert page.status_code == 403 and "allowed_origins" in page.json()["error"]
        own = urlsplit(daemon.url).netloc
        assert (await c.get("/api/runs", headers={"origin": f"http://{own}"})
                ).status_code == 200
    ws = daemon.url.replace("http", "ws") + "/api/feed?after=0"
    async with open_ws(ws, headers=[("origin", "http://attacker.example")]) as feed:
        with pytest.raises(Closed) as closed:
            await feed.get_message()
    assert closed.value.code == 1008 and "may not use vlmd" in closed.value.reason
    assert daemon.live.log.count() == 0


async def test_configured_names_and_origins_are_answered(tmp_path: Path,
                                                         nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, daemon_config(
        tmp_path / "vlmd.db", allowed_hosts=("vlmd.example.org",),
        allowed_origins=("https://dash.example.org",)))
    async with httpx.AsyncClient(base_url=d.url) as c:
        assert (await c.get("/api/runs", headers={"host": "vlmd.example.org"})
                ).status_code == 200
        assert (await c.get("/api/runs", headers={"origin": "https://dash.example.org"})
                ).status_code == 200
    d.shutdown.set()


@pytest.fixture
def vlmd_and_a_foreign_page(tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    """vlmd with one run in its log, and a web server of another origin whose page tries to
    read vlmd's feed and API."""
    d = start_daemon(tmp_path / "vlmd.db")
    assert d.post([submitted("r1"), completed("r1", 1, answer="SECRET")]).status_code == 200
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(f"""<!doctype html><script>
window.seen = [];
const ws = new WebSocket("{d.url.replace('http', 'ws')}/api/feed?after=0");
ws.onmessage = (m) => window.seen.push("ws:" + m.data);
ws.onclose = (e) => window.seen.push("closed:" + e.code);
fetch("{d.url}/api/events").then(r => r.text()).then(t => window.seen.push("fetch:" + t),
                                                       e => window.seen.push("fetch-error"));
</script>""")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path / "site")))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield d, f"http://127.0.0.1:{site.server_address[1]}/index.html"
    site.shutdown()
    site.server_close()
    d.stop()


def test_a_page_on_another_origin_reads_nothing_in_a_real_browser(
        vlmd_and_a_foreign_page: tuple[DaemonProcess, str]) -> None:
    d, page_url = vlmd_and_a_foreign_page
    port = urlsplit(d.url).port
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, "--host-resolver-rules=MAP rebound.example 127.0.0.1"])
        try:
            page = browser.new_page()
            page.goto(page_url)
            page.wait_for_function("window.seen.length >= 2", timeout=20_000)
            seen = page.evaluate("window.seen")
            assert not any("SECRET" in s for s in seen), seen
            assert "closed:1008" in seen or "closed:1006" in seen, seen
            # DNS rebinding: a name the attacker controls, resolving to vlmd's address
            rebound = page.goto(f"http://rebound.example:{port}/api/events")
            assert rebound is not None and rebound.status == 403
            assert "SECRET" not in page.content()
            own = page.goto(f"{d.url}/api/events")  # vlmd's own origin still works
            assert own is not None and own.status == 200 and "SECRET" in page.content()
        finally:
            browser.close()


def test_datasette_answers_only_vlmds_names(tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path / "vlmd.db", toml=f"[datasette]\nenabled = true\nport = {port}\n")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, d)
        assert httpx.get(f"{url}/vlmd.json", timeout=5).status_code == 200
        rebound = httpx.get(f"{url}/vlmd.json", headers={"host": f"attacker.example:{port}"},
                            timeout=5)
        assert rebound.status_code == 403 and "attacker.example" in rebound.text
        foreign = httpx.get(f"{url}/vlmd.json", headers={"origin": "http://attacker.example"},
                            timeout=5)
        assert foreign.status_code == 403
    finally:
        d.stop()


def wait_answering(url: str, d: DaemonProcess, timeout: float = 60) -> None:
    """Wait until the Datasette at `url` answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/-/versions.json", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, d.stderr
        time.sleep(0.2)
