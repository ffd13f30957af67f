"""``vlmd-agent``'s command line: a bad argument is one line and status 2; defaults; the token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmd_agent.cli import config
from vlmd_agent.outbox.spool import Outbox

BASE = ["--url", "http://127.0.0.1:8470", "--run", "r-cli", "--model", "demo:instant",
        "--dataset", "demo.jsonl"]
TOKEN_ENV = {"VLMD_TOKEN": "secret"}


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vlmd_agent`` (the real entry point) and capture what it says."""
    base = {k: v for k, v in os.environ.items() if k != "VLMD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "vlmd_agent", *args], capture_output=True,
                          text=True, timeout=30, env={**base, **(env or {})})


@pytest.mark.parametrize(("args", "named"), [
    ([a for a in BASE if a not in ("--run", "r-cli")], "--run"),
    ([*BASE, "--shard", "2/2"], "--shard"),
    ([*BASE, "--shard", "one"], "--shard"),
    ([*BASE, "--interval-s", "-1"], "--interval-s"),
    ([*BASE, "--ram-high", "1.5"], "--ram-high"),
    ([*BASE, "--max-new-tokens", "0"], "--max-new-tokens"),
    ([*BASE, "--on-hang", "pray"], "--on-hang"),
    ([*BASE[:1], "ftp://x", *BASE[2:]], "--url"),
    ([*BASE, "--concurrency", "0"], "--concurrency"),
    ([*BASE, "--rate", "0"], "--rate"),
    ([*BASE, "--temperature", "5"], "--temperature"),
    ([*BASE, "--extra-body", "[1, 2]"], "--extra-body"),
    ([*BASE, "--api-key-env", "sk-live-123"], "--api-key-env"),
    ([*BASE, "--server-metrics", "ftp://x"], "--server-metrics"),
    ([*BASE, "--judge", "demo:tiny"], "--judge: bad judge 'demo:tiny'"),
    ([*BASE, "--prompt-template", "mmbnech"], "--prompt-template: 'mmbnech' is neither"),
    ([*BASE, "--prompt-template", "{hint}"], "--prompt-template: bad template: it needs"),
    ([*BASE, "--columns", "qid"], "--columns: 'qid' is not field=column"),
])
def test_a_bad_argument_is_one_line_naming_it_and_status_2(args: list[str], named: str) -> None:
    done = agent(*args, env=TOKEN_ENV)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert lines[0].startswith("vlmd-agent: error:") and "Traceback" not in done.stderr
    assert "sk-live" not in done.stderr  # a key given by mistake is not repeated in a log


def test_without_a_token_the_agent_refuses_to_start(tmp_path: Path) -> None:
    done = agent(*BASE)
    assert done.returncode == 2
    assert done.stderr.strip() == ("vlmd-agent: error: no token: set $VLMD_TOKEN or pass "
                                   "--token-file")
    missing = agent(*BASE, "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--token-file" in missing.stderr


def test_the_token_file_wins_and_the_spool_defaults_under_vlmd_home(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    cfg = config([*BASE, "--shard", "1/4", "--token-file", str(token)],
                 {"VLMD_TOKEN": "from-env", "VLMD_HOME": str(tmp_path / "home")})
    assert cfg.token == "from-file"
    assert cfg.wrapper.spool == str(tmp_path / "home" / "spool" / "r-cli-1-4")
    assert (cfg.wrapper.shard, cfg.wrapper.attempt, cfg.on_hang) == ("1/4", 0, "report")
    plain = config(BASE, {"VLMD_TOKEN": "t", "HOME": str(tmp_path)})
    assert plain.wrapper.spool.endswith(os.path.join(".cache", "vlmd", "spool", "r-cli-0-1"))
    assert (plain.interval_s, plain.heartbeat_s, plain.hang_after_s) == (0.05, 1.0, 120.0)
    assert (plain.max_restarts, plain.vram_high, plain.ram_high, plain.cgroup) == (3, .95, .95,
                                                                                  None)


def test_vlmd_cgroup_dir_names_the_memory_cgroup_of_either_version(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "memory.usage_in_bytes").write_text("1\n")
    v1 = config(BASE, {**TOKEN_ENV, "VLMD_CGROUP_DIR": str(tmp_path / "v1")}).cgroup
    v2 = config(BASE, {**TOKEN_ENV, "VLMD_CGROUP_DIR": str(tmp_path)}).cgroup
    assert v1 is not None and (v1.version, v1.directory) == (1, tmp_path / "v1")
    assert v2 is not None and (v2.version, v2.directory) == (2, tmp_path)


def test_a_second_agent_on_the_same_spool_refuses_to_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    held = Outbox(spool / "watchdog.db", "http://127.0.0.1:9", "t")  # as a running agent would
    try:
        done = agent(*BASE, "--spool", str(spool), env=TOKEN_ENV)
    finally:
        held.close()
    assert done.returncode == 2
    assert "is another vlmd-agent running this shard?" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluation_options_reach_the_wrapper() -> None:
    cfg = config([*BASE, "--judge", "openai:j@http://127.0.0.1:9", "--prompt-template", "mmmu",
                  "--columns", "id=qid"], TOKEN_ENV)
    assert (cfg.wrapper.judge, cfg.wrapper.prompt_template, cfg.wrapper.columns) == (
        "openai:j@http://127.0.0.1:9", "mmmu", "id=qid")
