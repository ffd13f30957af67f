"""`vlmd report` and `vlmd diff` through the real CLI, real agents and a real scripted server,
first reading the log file (no daemon), then asking a daemon over the same log: runs are
compared within their dataset (its content hash, recorded at submission), runs that did not
answer every item are never on the front, a diff lists exactly the items whose score or
answered state changed, and runs of different datasets are refused unless --force. A run whose
dataset changed since its submission is not resumed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.test_cli_runs import answers, embedded_config, scripted  # noqa: F401  (a fixture)
from tests.test_cli_user_errors import vlmd
from vlmd_agent.evaluate import demo_data


def sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def expected_changes(a_csv: Path, b_csv: Path) -> dict[str, str]:
    """What changed from A's answers.csv to B's, read from the CSV files themselves."""
    a = {r["item"]: r for r in answers(a_csv)}
    b = {r["item"]: r for r in answers(b_csv)}
    found = {}
    for item in {**a, **b}:
        ra, rb = a.get(item), b.get(item)
        ok_a, ok_b = ra is not None and not ra["error"], rb is not None and not rb["error"]
        if ok_a != ok_b:
            found[item] = "only_a" if ok_a else "only_b"
        elif ok_a and ra is not None and rb is not None and ra["score"] != rb["score"]:
            found[item] = "up" if float(rb["score"]) > float(ra["score"]) else "down"
    return found


def listed(diff_out: str) -> dict[str, str]:
    """`vlmd diff`'s items: id -> change."""
    return {line.split()[1]: line.split()[2] for line in diff_out.splitlines()
            if line.startswith("item ")}


def test_report_and_diff_compare_like_with_like_with_and_without_a_daemon(
        tmp_path: Path, scripted: str) -> None:  # noqa: F811
    data = demo_data.build(tmp_path / "data", n=12)
    other = demo_data.build(tmp_path / "other", n=8)
    config = embedded_config(tmp_path)
    csvs = {}
    for name, model, dataset in (
            ("a", "demo:instant", data),
            # answers B every time, and every 4th request of the server fails
            ("b", f"openai:flaky?every=4&first_ms=1&gap_ms=1&text=B@{scripted}", data),
            ("c", "demo:instant", other)):
        done = vlmd("run", "--config", str(config), "--model", model, "--dataset", str(dataset),
                    "--name", name, "--max-failed", "0.9", cwd=tmp_path)
        assert done.returncode in (0, 3), done.stderr
        csvs[name] = tmp_path / done.stdout.split("answers.csv: ")[1].strip()
    changes = expected_changes(csvs["a"], csvs["b"])
    assert {"up", "down", "only_a"} <= set(changes.values())  # the scripts give each kind

    def both(*args: str, cfg: Path = config) -> subprocess.CompletedProcess[str]:
        return vlmd(*args, "--config", str(cfg), cwd=tmp_path, env={"VLMD_TOKEN": TOKEN})

    # no daemon: read from the log file
    report = both("report")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    sha = sha256sum(data)
    at = lines.index(f"dataset {data}  sha256 {sha[:12]}  12 items")
    rows = {line.split()[0]: line for line in lines[at + 2:at + 4]}
    assert set(rows) == {"*a", "-b"}  # b lost items to the flaky server: never on the front
    assert "finished with failures" in rows["-b"]
    at_other = lines.index(f"dataset {other}  sha256 {sha256sum(other)[:12]}  8 items")
    assert lines[at_other + 2].startswith("*c ")
    assert lines[-1].startswith("(* on its dataset's accuracy / TTFT p50 Pareto front;")
    only = both("report", "--dataset", sha[:8], "--cost", "joules_per_correct")
    assert only.returncode == 0 and str(other) not in only.stdout
    assert "energy per correct answer Pareto front" in only.stdout

    diff = both("diff", "a", "b")
    assert diff.returncode == 0, diff.stderr
    assert listed(diff.stdout) == changes
    assert f"12 items compared, {len(changes)} changed:" in diff.stdout
    refused = both("diff", "a", "c")
    assert refused.returncode == 2 and refused.stdout == ""
    [message] = [line for line in refused.stderr.splitlines() if line.startswith("vlmd diff:")]
    assert message.startswith("vlmd diff: runs r-")
    assert f"evaluated different datasets: {data} (sha256 {sha[:12]}) and {other}" in message
    assert message.endswith("; vlmd diff --force (GET /api/diff?force=1) compares them anyway")
    forced = both("diff", "a", "c", "--force")
    assert forced.returncode == 0 and "(not the same)" in forced.stdout
    offline_json = json.loads(both("diff", "a", "b", "--json").stdout)

    # a daemon over the same log: the same answers, through its routes
    d = start_daemon(tmp_path / "v.db")
    try:
        client = tmp_path / "client.toml"
        client.write_text(f"[server]\nport = {d.url.rsplit(':', 1)[1]}\n")
        report_d = both("report", cfg=client)
        assert report_d.returncode == 0 and "no daemon" not in report_d.stderr
        assert report_d.stdout == report.stdout
        diff_d = both("diff", "a", "b", cfg=client)
        assert (diff_d.returncode, diff_d.stdout) == (0, diff.stdout)
        assert json.loads(both("diff", "a", "b", "--json", cfg=client).stdout) == offline_json
        assert httpx.get(f"{d.url}/api/diff", params={"a": "a", "b": "b"}).json() == offline_json
        refused_d = both("diff", "a", "c", cfg=client)
        assert refused_d.returncode == 2 and message in refused_d.stderr.splitlines()

        cancelled_run(d, sha, data)
        report_z = both("report", cfg=client)
        [z] = [line for line in report_z.stdout.splitlines() if line.startswith("-z ")]
        assert "cancelled" in z and "1.000" in z  # the best and cheapest, and never on the front
        assert [line.split()[0] for line in report_z.stdout.splitlines()
                if line.startswith("*")] == ["*a", "*c"]
        assert httpx.get(f"{d.url}/api/runs/a").json()["dataset_sha256"] == sha

        # a run is not resumed over a dataset that changed since it was submitted
        original = data.read_bytes()
        data.write_bytes(original.replace(b"How many", b"How  many", 1))
        resumed = both("resume", "b", cfg=client)
        assert resumed.returncode == 2
        assert (f"dataset: {data} changed since the run was submitted (sha256 {sha[:12]}..., "
                f"now {sha256sum(data)[:12]}...)") in resumed.stderr
        data.write_bytes(original)
        again = both("resume", "b", cfg=client)  # the dataset is back: other checks answer
        assert again.returncode == 2 and "every shard has finished" in again.stderr
    finally:
        d.stop()
    assert both("report").stdout == report_z.stdout  # the log file says the same


def cancelled_run(d: DaemonProcess, sha: str, data: Path) -> None:
    """Run z: the dataset of a and b, every answer right and fast, but cancelled after 11."""
    events = [{"key": "z/submitted", "run": "z", "kind": "run.submitted", "ts": 1.7e9,
               "body": {"model": "demo:instant", "dataset": str(data), "total": 12,
                        "dataset_sha256": sha, "name": "z"}},
              {"key": "z/started", "run": "z", "kind": "run.started", "ts": 1.7e9 + 1,
               "body": {"total": 12, "host": "h", "pid": 1}}]
    events += [{"key": f"z/item/{i}", "run": "z", "kind": "item.completed", "ts": 1.7e9 + 2 + i,
                "body": {"item": f"demo-{i:04d}", "answer": "A", "score": 1.0, "ttft_ms": 0.01,
                         "tpot_ms": 0.01, "e2e_ms": 0.02}} for i in range(11)]
    events.append({"key": "z/cancelled", "run": "z", "kind": "run.cancelled", "ts": 1.7e9 + 20,
                   "body": {"reason": "cancelled by the user"}})
    r = d.post(events)
    assert r.status_code == 200, r.text
