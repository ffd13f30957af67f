"""`vlmd run` tells the truth about a run, through the real CLI and real agents: a server that
fails every request trips the circuit breaker, failed items earn their own exit status, the end
of a run says why, Ctrl-C leaves a run going (or cancels it), `vlmd follow` attaches again,
`vlmd report` and `vlmd runs` read the log with no daemon, and a refused token says where the
client looked."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.events import body
from tests.test_cli_user_errors import vlmd
from vlmd.live import replay
from vlmd_agent.evaluate import demo_data

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build(tmp_path_factory.mktemp("data"), n=200)


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    """tests/streaming_server.py: plays the script a request's model names."""
    with subprocess.Popen([sys.executable, str(HERE / "streaming_server.py")],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            yield f"http://127.0.0.1:{int(proc.stdout.readline().split()[1])}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def embedded_config(folder: Path) -> Path:
    """A config whose daemon nobody runs: `vlmd run` starts its own over folder/v.db."""
    path = folder / "v.toml"
    path.write_text(f'[server]\nport = 0\n[datasette]\nenabled = false\n'
                    f'[log]\npath = "{folder / "v.db"}"\n')
    return path


def answers(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def events(db: Path, kind: str) -> list[dict[str, Any]]:
    log = replay.open_readonly(db)
    try:
        return [{"run": e.run, **body(e)} for e in log.read(kinds=[kind])]
    finally:
        log.close()


def test_a_server_that_fails_every_request_trips_the_breaker_and_the_run_fails_saying_why(
        tmp_path: Path, dataset: Path, scripted: str) -> None:
    model = f"openai:error?status=500&message=boom@{scripted}"
    done = vlmd("run", "--config", str(embedded_config(tmp_path)), "--model", model,
                "--dataset", str(dataset), "--shards", "2", "--name", "boom", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    why = "backend_error: HTTP 500: boom (the first 10 items all failed with this error)"
    assert "run boom (r-" in done.stdout and f"  why: {why}" in done.stdout
    [csv_path] = (tmp_path / "vlmd-out").glob("boom-r-*/answers.csv")
    rows = answers(csv_path)
    # each shard stopped at its tenth item: not one more of the 200 was spent
    assert len(rows) == 20
    assert {r["error"] for r in rows} == {"backend_error: HTTP 500: boom"}
    assert f"  item errors ({len(rows)} failed items):" in done.stdout
    assert f"  {len(rows):>6}  backend_error: HTTP 500: boom" in done.stdout
    # both shards failed, each with the breaker's reason, after the preflight found the server
    failed = events(tmp_path / "v.db", "run.failed")
    assert sorted(f["shard"] for f in failed) == ["0/2", "1/2"]
    assert {f["reason"] for f in failed} == {why}
    phases = [p["phase"] for p in events(tmp_path / "v.db", "run.phase") if p["shard"] == "0/2"]
    assert phases[:4] == ["resolving", "preflight", "loading", "warmup"]


def test_a_run_that_finishes_with_failed_items_exits_3_and_counts_them(
        tmp_path: Path, dataset: Path, scripted: str) -> None:
    model = f"openai:flaky?every=4&first_ms=1&gap_ms=1&tokens=2@{scripted}"
    done = vlmd("run", "--config", str(embedded_config(tmp_path)), "--model", model,
                "--dataset", str(dataset), "--limit", "20", "--max-failed", "0.9", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert ": finished with failures, 20/20 items, 5 failed" in done.stdout
    assert "       5  backend_error: HTTP 500: flaky" in done.stdout
    assert "  tokens counted by: usage (15 items)" in done.stdout
    assert "  VRAM: remote server: not measured by the client" in done.stdout


def test_a_clean_run_exits_0_and_its_answers_go_to_name_and_id(
        tmp_path: Path, dataset: Path) -> None:
    config = embedded_config(tmp_path)
    runs = []
    for _ in range(2):
        done = vlmd("run", "--config", str(config), "--model", "demo:instant", "--dataset",
                    str(dataset), "--limit", "8", "--name", "same", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert ": finished, 8/8 items, 0 failed" in done.stdout
        runs.append(done.stdout.split("answers.csv: ")[1].strip())
    # a name used twice does not overwrite the first run's answers
    assert len(set(runs)) == 2
    assert all(Path(tmp_path / p).parent.name.startswith("same-r-") for p in runs)
    assert all(len(answers(tmp_path / p)) == 8 for p in runs)
    # no daemon now: report and runs read the log; the shared name is an error listing both
    report = vlmd("report", "--config", str(config), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"no daemon at http://127.0.0.1:0; reading the log {tmp_path / 'v.db'}" in (
        report.stderr)
    assert len([line for line in report.stdout.splitlines() if "same  demo:instant" in line]
               ) == 2
    listed = vlmd("runs", "--config", str(config), cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.count(" finished ") == 2
    shared = vlmd("report", "same", "--config", str(config), cwd=tmp_path)
    assert shared.returncode == 2
    assert "vlmd report: the name 'same' matches 2 runs (r-" in shared.stderr


def test_a_refused_token_says_where_the_client_looked_and_no_token_file_appears(
        tmp_path: Path, dataset: Path) -> None:
    (tmp_path / "daemon").mkdir()
    d = start_daemon(tmp_path / "daemon" / "vlmd.db")
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        config = elsewhere / "client.toml"
        config.write_text(f"[server]\nport = {d.url.rsplit(':', 1)[1]}\n")
        env = {k: v for k, v in os.environ.items() if k != "VLMD_TOKEN"}
        done = subprocess.run(
            [sys.executable, "-m", "vlmd", "run", "--config", str(config), "--model",
             "demo:instant", "--dataset", str(dataset)],
            capture_output=True, text=True, timeout=60, cwd=elsewhere, env=env)
    finally:
        d.stop()
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == (f"vlmd run: vlmd at {d.url} refused the token (missing token: send "
                        "'Authorization: Bearer <token>')")
    assert lines[1] == (f"  this client looked in $VLMD_TOKEN (unset), server.token in {config} "
                        f"(unset), {elsewhere / 'vlmd.token'} (no such file); set VLMD_TOKEN to "
                        "the daemon's token (the vlmd.token in its state directory), or pass "
                        "--config with the daemon's vlmd.toml")
    assert list(elsewhere.iterdir()) == [config]  # no token file made up


def submit(d: DaemonProcess, body: dict[str, Any]) -> str:
    r = httpx.post(f"{d.url}/api/runs", json=body, timeout=30,
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text
    return str(r.json()["run"])


def wait_status(d: DaemonProcess, run: str, *statuses: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (status := httpx.get(f"{d.url}/api/runs/{run}").json()["status"]) not in statuses:
        assert time.monotonic() < deadline, f"run {run} still {status}"
        time.sleep(0.1)
    return str(status)


def test_vlmd_follow_attaches_to_a_running_run_until_it_ends(
        daemon_proc: DaemonProcess, dataset: Path, tmp_path: Path) -> None:
    run = submit(daemon_proc, {"model": "demo:instant:60", "dataset": str(dataset),
                               "limit": 40, "name": "slow"})
    done = vlmd("follow", "slow", cwd=tmp_path, env={"VLMD_TOKEN": TOKEN, "VLMD_CONFIG": str(
        port_config(daemon_proc, tmp_path))})
    assert done.returncode == 0, done.stderr
    assert f"{run} [########################] 40/40" in done.stderr
    assert f"run slow ({run}): finished, 40/40 items, 0 failed" in done.stdout


def port_config(d: DaemonProcess, folder: Path) -> Path:
    path = folder / "client.toml"
    path.write_text(f"[server]\nport = {d.url.rsplit(':', 1)[1]}\n")
    return path


def start_run(d: DaemonProcess, dataset: Path, folder: Path, **kw: Any
              ) -> subprocess.Popen[str]:
    """`vlmd run` of a slow run against `d`; returns once its progress bar drew."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmd", "run", "--config", str(port_config(d, folder)),
         "--model", "demo:instant:100", "--dataset", str(dataset), "--limit", "100"],
        cwd=folder, text=True, env={**os.environ, "VLMD_TOKEN": TOKEN}, **kw)
    return proc


def read_until(stream: Any, text: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
        chunk = os.read(stream, 4096) if isinstance(stream, int) else stream.readline()
        assert chunk, f"output ended before {text!r}: {seen!r}"
        seen += chunk.decode() if isinstance(chunk, bytes) else chunk
    return seen


def run_id(text: str) -> str:
    return text.split("vlmd: run ")[1].split()[0]


def test_ctrl_c_off_a_terminal_says_the_run_goes_on_and_a_second_one_cancels_it(
        daemon_proc: DaemonProcess, dataset: Path, tmp_path: Path) -> None:
    with start_run(daemon_proc, dataset, tmp_path, stderr=subprocess.PIPE) as proc:
        run = run_id(read_until(proc.stderr, "] 0/100"))
        proc.send_signal(signal.SIGINT)
        said = read_until(proc.stderr, "cancels it")
        assert proc.wait(timeout=20) == 130
    assert (f"vlmd: interrupted: run {run} goes on in vlmd (follow it: vlmd follow {run}; "
            f"cancel it: vlmd cancel {run}); a second Ctrl-C within 5 s cancels it") in said
    assert wait_status(daemon_proc, run, "finished", timeout=60) == "finished"

    with start_run(daemon_proc, dataset, tmp_path, stderr=subprocess.PIPE,
                   stdout=subprocess.PIPE) as proc:
        run = run_id(read_until(proc.stderr, "] 0/100"))
        proc.send_signal(signal.SIGINT)
        read_until(proc.stderr, "cancels it")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"vlmd: run {run} cancelled (1 agents stopped)" in err
    assert httpx.get(f"{daemon_proc.url}/api/runs/{run}").json()["status"] == "cancelled"
    assert ": cancelled, " in out


def test_ctrl_c_on_a_terminal_asks_whether_to_cancel(
        daemon_proc: DaemonProcess, dataset: Path, tmp_path: Path) -> None:
    import pty

    main, child = pty.openpty()
    with start_run(daemon_proc, dataset, tmp_path, stdin=child, stderr=child,
                   stdout=subprocess.PIPE) as proc:
        os.close(child)
        try:
            run = run_id(read_until(main, "] 0/100"))
            proc.send_signal(signal.SIGINT)
            asked = read_until(main, "(Ctrl-C: yes) ")
            os.write(main, b"n\n")
            assert proc.wait(timeout=20) == 130
        finally:
            os.close(main)
    assert (f"vlmd: run {run} goes on in vlmd (follow it: vlmd follow {run}; cancel it: "
            f"vlmd cancel {run}).\r\nCancel run {run} now? [y/N] (Ctrl-C: yes) ") in asked
    assert wait_status(daemon_proc, run, "finished", timeout=60) == "finished"


def test_ctrl_c_under_an_embedded_daemon_leaves_the_agents_to_the_next_vlmd_serve(
        dataset: Path, tmp_path: Path) -> None:
    with subprocess.Popen(
            [sys.executable, "-m", "vlmd", "run", "--config", str(embedded_config(tmp_path)),
             "--model", "demo:instant:200", "--dataset", str(dataset), "--limit", "60"],
            cwd=tmp_path, text=True, stderr=subprocess.PIPE,
            env={**os.environ, "VLMD_TOKEN": TOKEN}) as proc:  # the next daemon's token too
        seen = read_until(proc.stderr, "] 0/60")
        run = run_id(seen)
        port = int(seen.split("dashboard: http://127.0.0.1:")[1].split("/")[0])
        proc.send_signal(signal.SIGINT)
        said = read_until(proc.stderr, "cancels it")
        assert proc.wait(timeout=20) == 130
    assert (f"vlmd: interrupted: this vlmd stops with this command; run {run}'s agents finish "
            "their items and keep their events for the next `vlmd serve` on this log") in said
    # the agents went on without a daemon; a daemon on the same log and port gets it all
    d = start_daemon(tmp_path / "v.db", port=port)
    try:
        assert wait_status(d, run, "finished", timeout=90) == "finished"
        assert httpx.get(f"{d.url}/api/runs/{run}").json()["done"] == 60
    finally:
        d.stop()
