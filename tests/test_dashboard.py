"""The live dashboard in a real headless Chromium against a real `vlmd serve` subprocess.

Every check waits on a condition with Playwright's auto-waiting `expect`, never on a fixed sleep.
Each page leaves a screenshot in docs/screenshots/<page>.png.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import DaemonProcess, start_daemon

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
T0 = time.time() - 600.0

# tests/conftest.py's start_daemon leaves its stderr file object open (the child holds its own
# copy); until it closes it after Popen, the garbage-collected handle is not this file's failure.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <_io.FileIO name=.*\.stderr'"
    ":pytest.PytestUnraisableExceptionWarning")
_keys = itertools.count()


def ev(run: str, kind: str, body: dict[str, Any], ts: float) -> dict[str, Any]:
    return {"key": f"{run}/{kind}/{next(_keys)}", "run": run, "kind": kind, "ts": ts, "body": body}


def begin(run: str, total: int, ts: float = T0, model: str = "demo:tiny") -> list[dict[str, Any]]:
    return [ev(run, "run.submitted", {"model": model, "dataset": "demo.jsonl", "total": total,
                                      "name": f"{run}-name"}, ts),
            ev(run, "run.started", {"total": total, "host": "h1", "pid": 42}, ts + 0.5)]


def done(run: str, item: int, ts: float, score: float = 1.0, ttft: float = 100.0,
         vram: float = 12.5) -> dict[str, Any]:
    return ev(run, "item.completed", {
        "item": str(item), "answer": "B", "expected": "B" if score else "A", "score": score,
        "question": f"question {item}?", "ttft_ms": ttft, "tpot_ms": ttft / 10,
        "e2e_ms": ttft + 100, "input_tokens": 50, "output_tokens": 11,
        "vram_before_mb": 1000.0, "vram_peak_delta_mb": vram}, ts)


def fail(run: str, item: int, ts: float) -> dict[str, Any]:
    return ev(run, "item.failed", {"item": str(item), "reason": "oom",
                                   "message": "CUDA out of memory"}, ts)


def sample(t: float, i: int) -> dict[str, Any]:
    return {"t": t, "gpus": [
        {"index": g, "uuid": f"GPU-{g}", "name": "H200", "mem_used_mb": 20000.0 + 100 * g + i,
         "mem_total_mb": 143771.0, "mem_reserved_mb": 500.0, "util_gpu": (i * 7 + g * 30) % 100,
         "util_mem": 10, "power_w": 300.0, "temp_c": 50, "proc_mem_mb": 15000.0 + i,
         "proc_mem_source": "nvml", "na": []} for g in (0, 1)],
        "ram": {"rss_mb": 3000.0 + i, "host_used_mb": 64000.0 + 10 * i,
                "host_available_mb": 60000.0, "host_total_mb": 128000.0,
                "cgroup_usage_mb": None, "cgroup_limit_mb": None, "oom_kills": 0}}


def samples(run: str, t: float, n: int, start: int = 0) -> dict[str, Any]:
    return ev(run, "watchdog.sample",
              {"host": "h1", "samples": [sample(t + k * 0.05, start + k) for k in range(n)]},
              t + n * 0.05)


def post(d: DaemonProcess, events: list[dict[str, Any]]) -> None:
    r = d.post(events)
    assert r.status_code == 200, r.text


def row(page: Page, run: str) -> Any:
    return page.locator(f'#runs tr[data-run="{run}"]')


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard tests need Debian's Chromium "
                    "(apt-get install -y chromium); do not run `playwright install`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; an uncaught script error in it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(10_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the tests whose runs do not disturb each other."""
    d = start_daemon(tmp_path_factory.mktemp("dash") / "vlmd.db")
    yield d
    d.stop()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_runs_page_moves_with_posted_events_without_reload(shared: DaemonProcess,
                                                           page: Page) -> None:
    post(shared, begin("live-a", 20))
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    handshakes: list[dict[str, Any]] = []
    cdp.on("Network.webSocketHandshakeResponseReceived", lambda e: handshakes.append(e))
    page.goto(f"{shared.url}/")
    expect(page.locator("#conn-status")).to_have_text("live")
    a = row(page, "live-a")
    expect(a.locator(".total")).to_have_text("20")
    expect(a.locator(".done")).to_have_text("0")
    page.evaluate("window.__same_page = true")

    post(shared, [done("live-a", i, T0 + 1 + i, score=float(i % 2)) for i in range(5)])
    post(shared, [fail("live-a", 5, T0 + 7)])
    expect(a.locator(".done")).to_have_text("5")
    expect(a.locator(".failed")).to_have_text("1")
    expect(a.locator(".seg-done")).to_have_attribute("style", "width: 25%;")
    expect(a.locator(".accuracy")).to_have_text("40.0%")
    post(shared, [ev("live-a", "alert.vram_high", {"message": "VRAM at 97%"}, T0 + 8)])
    expect(a.locator(".alerts")).to_have_text("1")

    post(shared, begin("live-b", 3, ts=T0 + 9))  # a new run appears as it is submitted
    expect(row(page, "live-b").locator(".status")).to_have_text("running")
    assert page.evaluate("window.__same_page") is True

    # The page shows the daemon's figures: it holds the rows the state stream served.
    api = {r["run"]: r for r in httpx.get(f"{shared.url}/api/runs").json()["runs"]}
    mine = page.evaluate("[...window.vlmd.runs.values()]")
    assert {r["run"] for r in mine} == set(api)
    for run in mine:
        theirs = api[run["run"]]
        for field in ("status", "done", "failed", "total", "alerts", "last_alert", "name",
                      "model", "started_at", "finished_at", "accuracy", "shards", "reason"):
            assert run[field] == theirs[field], (field, run, theirs)
        shown = row(page, run["run"])
        assert shown.get_attribute("data-status") == theirs["status"]
        assert shown.get_attribute("data-done") == str(theirs["done"])
    # Chromium offered permessage-deflate: the feed came compressed, once for all its clients
    extensions = {k.lower(): v for h in handshakes
                  for k, v in h["response"]["headers"].items()}["sec-websocket-extensions"]
    assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions
    shot(page, "runs")


def test_run_page_charts_tables_and_alerts_move_live(shared: DaemonProcess, page: Page) -> None:
    run = "live-r"
    t = T0 + 100
    post(shared, [*begin(run, 40, ts=t), samples(run, t + 1, 20)])
    page.goto(f"{shared.url}/run.html?run={run}")
    expect(page.locator("#conn-status")).to_have_text("live")
    memory = page.locator("#chart-memory")
    expect(memory).to_have_attribute("data-points", "20")
    expect(memory).to_have_attribute(
        "data-series", "gpu0 used,gpu0 wrapper,gpu1 used,gpu1 wrapper")
    expect(page.locator("#chart-ram")).to_have_attribute("data-series", "wrapper rss,host used")
    expect(page.locator("#csv-link")).to_have_attribute("href", f"/api/runs/{run}/answers.csv")
    expect(page.locator("#datasette-link")).to_be_hidden()  # /healthz has no datasette_url
    page.evaluate("window.__same_page = true")

    post(shared, [samples(run, t + 2, 20, start=20)])
    expect(memory).to_have_attribute("data-points", "40")
    expect(page.locator("#chart-util")).to_have_attribute("data-points", "40")
    post(shared, [done(run, i, t + 3 + i * 0.1, score=float(i % 3 > 0), ttft=50.0 + 10 * i,
                       vram=float(i)) for i in range(30)])
    post(shared, [fail(run, i, t + 7) for i in range(30, 33)])
    head = page.locator("#run-head")
    expect(head.locator(".done")).to_have_text("30")
    expect(head.locator(".failed")).to_have_text("3")
    expect(page.locator("#hist-ttft")).to_have_attribute("data-count", "30")
    expect(page.locator("#hist-vram")).to_have_attribute("data-count", "30")
    table = page.locator("#answers-table")
    expect(table).to_have_attribute("data-rows", "33")

    page.select_option("#answer-filter", "failed")
    expect(table).to_have_attribute("data-rows", "3")
    expect(table.locator("tbody tr[data-outcome=failed]")).to_have_count(3)
    page.select_option("#answer-filter", "wrong")
    expect(table).to_have_attribute("data-rows", "10")
    page.select_option("#answer-filter", "all")
    ttft = table.locator('th[data-key="ttft_ms"]')
    ttft.click()
    ttft.click()
    expect(ttft).to_have_attribute("data-sorted", "desc")
    expect(table.locator("tbody tr").first).to_have_attribute("data-item", "29")
    table.locator("tbody tr").first.locator("button.show-image").click()
    expect(table.locator(".image-row")).to_contain_text("image not available")

    stacks = "Thread 0x7f (most recent call first):\n  File \"wrapper.py\", line 88 in generate"
    post(shared, [ev(run, "alert.hang", {"message": "no progress for 30 s", "stacks": stacks,
                                         "samples": [sample(t + 8, 0), sample(t + 8.05, 1)]},
                     t + 8)])
    alert = page.locator('#alerts li[data-kind="alert.hang"]')
    expect(alert).to_contain_text("no progress for 30 s")
    expect(head.locator(".alerts")).to_have_text("1")
    alert.locator("details.stacks summary").click()
    expect(alert.locator("details.stacks pre")).to_be_visible()
    expect(alert.locator("details.stacks pre")).to_contain_text("line 88 in generate")
    alert.locator("details.samples summary").click()
    expect(alert.locator("details.samples tbody tr")).to_have_count(2)
    assert page.evaluate("window.__same_page") is True
    shot(page, "run")


def serving_samples(run: str, t: float, n: int, joules: float,
                    kv: list[float]) -> dict[str, Any]:
    """A second of samples of a model on this host whose GPUs used `joules` each, and the
    engine's KV-cache usage read at the values `kv`."""
    batch = [sample(t + k * 0.05, k) for k in range(n)]
    for k, s in enumerate(batch):
        for g in s["gpus"]:
            g["energy_j"] = 1000.0 + joules * k / (n - 1)
    scrapes = [{"t": t + i * 0.25, "engine": "vllm", "kv_cache_usage": v, "running": 2 + i,
                "waiting": i % 2} for i, v in enumerate(kv)]
    return ev(run, "watchdog.sample", {"host": "h1", "samples": batch, "server": scrapes,
                                       "model_gpus": [0, 1]}, t + n * 0.05)


def test_run_page_plots_the_engines_kv_cache_and_shows_energy_per_correct_answer(
        shared: DaemonProcess, page: Page) -> None:
    run = "served-r"
    t = T0 + 300
    post(shared, [*begin(run, 4, ts=t), *(done(run, i, t + 1 + i * 0.1, score=1.0)
                                          for i in range(4))])
    page.goto(f"{shared.url}/run.html?run={run}")
    expect(page.locator("#conn-status")).to_have_text("live")
    expect(page.locator("#server-figure")).to_be_hidden()  # no engine metrics yet
    post(shared, [serving_samples(run, t + 2, 20, joules=200.0, kv=[0.1, 0.3, 0.42, 0.2])])
    chart = page.locator("#chart-server")
    expect(page.locator("#server-figure")).to_be_visible()
    expect(chart).to_have_attribute("data-series", "KV cache %,running,waiting")
    expect(chart).to_have_attribute("data-points", "4")
    head = page.locator("#run-head")
    expect(head.locator(".kv-peak")).to_have_text("42.0%")
    expect(head.locator(".joules")).to_have_text("100.0")  # 2 GPUs x 200 J over 4 correct


def test_reconnects_after_the_daemon_is_killed_and_shows_the_right_totals(
        tmp_path: Path, page: Page) -> None:
    db = tmp_path / "vlmd.db"
    first = start_daemon(db)
    port = urlsplit(first.url).port
    assert port
    second = None
    try:
        post(first, [*begin("rc", 10), *(done("rc", i, T0 + 1 + i) for i in range(3))])
        page.goto(f"{first.url}/")
        status = page.locator("#conn-status")
        expect(status).to_have_text("live")
        expect(row(page, "rc").locator(".done")).to_have_text("3")

        first.proc.kill()
        first.proc.wait(10)
        expect(status).to_have_text("reconnecting…")
        expect(status).to_have_attribute("data-state", "reconnecting")

        second = start_daemon(db, port=port)
        post(second, [done("rc", i, T0 + 5 + i) for i in range(3, 7)])
        post(second, [fail("rc", 7, T0 + 12)])
        expect(status).to_have_text("live")
        rc = row(page, "rc")
        expect(rc.locator(".done")).to_have_text("7")
        expect(rc.locator(".failed")).to_have_text("1")
        # It resumed after the last seq it had: the row is the daemon's, at the daemon's head.
        api = httpx.get(f"{second.url}/api/runs/rc").json()
        assert (api["done"], api["failed"]) == (7, 1)
        assert page.evaluate("window.vlmd.feed.last") == api["head"]
        assert page.evaluate("window.vlmd.runs.get('rc').last_seq") == api["last_seq"]
    finally:
        for d in (first, second):
            if d is not None and d.proc.poll() is None:
                d.stop()


def test_replay_plays_a_past_run_to_its_final_totals(shared: DaemonProcess, page: Page) -> None:
    run = "replayed"
    t = T0 + 200
    events = [*begin(run, 50, ts=t)]
    for i in range(50):
        events.append(done(run, i, t + 1 + i * 0.2, score=float(i % 4 > 0), ttft=80.0 + i))
        if i % 10 == 0:
            events.append(samples(run, t + 1 + i * 0.2, 10, start=i))
    events += [fail(run, 50, t + 11.5),
               ev(run, "alert.vram_high", {"message": "VRAM at 97%"}, t + 6),
               ev(run, "run.finished", {}, t + 12)]
    events.sort(key=lambda e: e["ts"])
    post(shared, events)
    final = httpx.get(f"{shared.url}/api/runs/{run}").json()
    assert (final["done"], final["failed"], final["status"]) == (50, 1, "finished")

    page.goto(f"{shared.url}/replay.html?run={run}")
    state = page.locator("#replay-state")
    expect(state).to_have_text("paused")
    head = page.locator("#run-head")
    expect(head.locator(".done")).to_have_text("0")
    page.select_option("#speed", "1000")
    page.click("#play")
    expect(state).to_have_text("ended")
    expect(head.locator(".done")).to_have_text(str(final["done"]))
    expect(head.locator(".failed")).to_have_text(str(final["failed"]))
    # one failed item: the badge says so (the status is still finished)
    expect(head.locator(".status")).to_have_text("finished with failures")
    expect(head.locator(".accuracy")).to_have_text(f"{final['summary']['accuracy'] * 100:.1f}%")
    expect(page.locator("#answers-table")).to_have_attribute("data-rows", "51")
    expect(page.locator("#chart-memory")).to_have_attribute("data-points", "50")
    expect(page.locator("#alerts li")).to_have_count(1)
    shot(page, "replay")

    page.eval_on_selector("#scrub", "(el) => { el.value = '500'; "
                                    "el.dispatchEvent(new Event('input')); }")
    expect(state).to_have_text("paused")
    expect(head.locator(".done")).not_to_have_text("50")
    halfway = int(head.locator(".done").inner_text())
    assert 10 < halfway < 50
    position = page.evaluate("window.vlmd.at")
    got = httpx.get(f"{shared.url}/api/runs/{run}/state", params={"at": position["seq"]}).json()
    assert got["runs"][0]["done"] == halfway  # the daemon's fold at that point, as shown

    page.click("#play")  # plays on from there (the stream resumes after that seq)
    expect(state).to_have_text("ended")
    expect(head.locator(".done")).to_have_text(str(final["done"]))
    expect(page.locator("#answers-table")).to_have_attribute("data-rows", "51")
    expect(page.locator("#chart-memory")).to_have_attribute("data-points", "50")
