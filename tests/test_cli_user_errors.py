"""`vlmd run`'s user errors, through the real CLI: each fails before any agent starts, in one
line that says what to fix, with exit status 2, and reads the same whether `vlmd run` talks to
a running daemon or starts its own. Real servers on loopback: a port nothing listens on, and
`transformers serve` pinned to a demo model (which serves it by its path, not by a short name).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, DaemonProcess, start_daemon
from tests.ports import free_port
from vlmd_agent.evaluate import demo_data, demo_models


def vlmd(*args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlmd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets good and bad, and an empty folder that is no model."""
    here = tmp_path_factory.mktemp("errors")
    demo_data.build(here / "data", n=12)
    (here / "answers.csv").write_text("id,question\n1,what\n")
    (here / "array.json").write_text('[{"id": 1, "question": "q", "answer": "a"}]\n')
    (here / "bad.tsv").write_text("index\tquestion\n1\tWhat colour?\n")
    (here / "not-a-model").mkdir()
    return here


@pytest.fixture(scope="module")
def pinned_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`transformers serve MODEL`: a real OpenAI-compatible server that serves one model."""
    model = demo_models.build("tiny", tmp_path_factory.mktemp("served"))
    port = free_port()
    serve = Path(sys.executable).parent / "transformers"
    proc = subprocess.Popen(
        [str(serve), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "transformers serve exited"
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "transformers serve did not answer in 90 s"
            time.sleep(0.2)
        yield url, model
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("running") / "vlmd.db")
    yield d
    d.stop()


Case = Callable[[Path, tuple[str, Path]], tuple[list[str], str]]
DEMO = ["--dataset", "data/demo.jsonl"]
CASES: dict[str, Case] = {
    "dead server": lambda f, s: (
        ["--model", f"openai:qwen2-vl@http://127.0.0.1:{(p := free_port())}", *DEMO],
        f"model: no OpenAI-compatible server answers at http://127.0.0.1:{p}/v1 (connection "
        f"refused); start it, or fix the URL in 'openai:qwen2-vl@http://127.0.0.1:{p}'"),
    "wrong model name": lambda f, s: (
        ["--model", f"openai:qwen2-vl@{s[0]}", *DEMO],
        f"model: {s[0]}/v1 does not serve 'qwen2-vl'; it serves '{s[1]}': use --model "
        f"openai:{s[1]}@{s[0]}"),
    "missing model folder": lambda f, s: (
        ["--model", "hf:/nonexistent/llava-1.5-7b", *DEMO],
        "model: no model folder '/nonexistent/llava-1.5-7b' on this host"),
    "folder without a config": lambda f, s: (
        ["--model", "hf:not-a-model", *DEMO],
        f"model: '{f / 'not-a-model'}' holds no config.json: expected a transformers model "
        "folder (config.json, weights, processor)"),
    "unknown demo model": lambda f, s: (
        ["--model", "demo:huge", *DEMO],
        "model: bad model spec 'demo:huge': unknown demo model 'huge' (known: small, tiny, "
        "instant[:MS]); accepted forms: openai:NAME@BASE_URL, hf:PATH, demo:NAME"),
    "unknown model kind": lambda f, s: (
        ["--model", "gpt4:x", *DEMO],
        "model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME"),
    "a csv file": lambda f, s: (
        ["--model", "demo:instant", "--dataset", "answers.csv"],
        f"dataset: {f / 'answers.csv'}: unknown format '.csv': expected .jsonl or .json "
        "(JSON Lines), .tsv (VLMEvalKit), .parquet, .arrow, or a folder of them"),
    "a JSON array": lambda f, s: (
        ["--model", "demo:instant", "--dataset", "array.json"],
        f"dataset: {f / 'array.json'}:1: expected a JSON object, got an array: write JSON "
        "Lines, one object per line"),
    "a bad TSV": lambda f, s: (
        ["--model", "demo:instant", "--dataset", "bad.tsv"],
        f"dataset: {f / 'bad.tsv'}:1: image: missing column"),
    "no dataset file": lambda f, s: (
        ["--model", "demo:instant", "--dataset", "nothing.jsonl"],
        f"dataset: no dataset at '{f / 'nothing.jsonl'}' on the vlmd host: no such file"),
    "a zero limit": lambda f, s: (
        ["--model", "demo:instant", *DEMO, "--limit", "0"],
        "limit: expected an integer from 1 to 10000000"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_before_any_agent_starts_with_or_without_a_daemon(
        case: str, folder: Path, pinned_server: tuple[str, Path], running: DaemonProcess,
        tmp_path: Path) -> None:
    args, message = CASES[case](folder, pinned_server)
    embedded = tmp_path / "embedded.toml"
    embedded.write_text(f'[server]\nport = 0\n[datasette]\nenabled = false\n'
                        f'[log]\npath = "{tmp_path / "embedded.db"}"\n')
    attached = tmp_path / "attached.toml"
    attached.write_text(f"[server]\nport = {running.url.rsplit(':', 1)[1]}\n"
                        f'[log]\npath = "{tmp_path / "attached.db"}"\n')
    env = {"VLMD_TOKEN": TOKEN}
    own = vlmd("run", "--config", str(embedded), *args, cwd=folder, env=env)
    theirs = vlmd("run", "--config", str(attached), *args, cwd=folder, env=env)
    for done in (own, theirs):
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1] == f"vlmd run: {message}"
        assert "Traceback" not in done.stderr and done.stdout == ""
    # one line of its own; the embedded daemon says once that it started
    assert len(theirs.stderr.splitlines()) == 1
    assert own.stderr.splitlines()[0].startswith("vlmd: no daemon at http://127.0.0.1:0; "
                                                 "starting one here")
    assert len(own.stderr.splitlines()) == 2
    # before any agent: nothing was submitted
    assert httpx.get(f"{running.url}/api/runs").json()["runs"] == []
    listed = vlmd("runs", "--db", str(tmp_path / "embedded.db"), cwd=folder)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1  # the header only
