"""POST /api/runs and cancel: what is refused, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.conftest import TOKEN
from tests.events import finished, started, submitted
from vlmd.config import Config
from vlmd.daemon.serve import Daemon
from vlmd.launch import submit
from vlmd.launch.launcher import LaunchSpec
from vlmd_agent.catalog import RunSubmitted

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("{}\n")
    return path


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "gpt:x"}, "model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME"),
    ({"model": "openai:m@ftp://x"}, "model: expected"),
    ({"dataset": "/nonexistent/x.jsonl"},
     "dataset: no dataset at '/nonexistent/x.jsonl' on the vlmd host: no such file"),
    ({"dataset": "../../../../etc"}, "dataset: no dataset at '../../../../etc' on the vlmd host"),
    ({"dataset": "/nonexistent/*.parquet"}, "the pattern matches no .parquet or .arrow file"),
    ({"judge": "demo:tiny"}, "judge: bad judge 'demo:tiny': expected openai:NAME@BASE_URL"),
    ({"judge": 3}, "judge: expected text of 1 to 4096 characters"),
    ({"prompt_template": "{q}"}, "prompt_template: bad template: unknown field {q}"),
    ({"columns": "colour=c"}, "columns: unknown field 'colour'"),
    ({"name": "../etc/passwd"}, "name: letters, digits"),
    ({"shards": 0}, "shards: expected an integer from 1 to 256"),
    ({"shards": "2"}, "shards: expected an integer"),
    ({"limit": True}, "limit: expected an integer"),
    ({"device": "tpu"}, "device: expected auto, cpu, cuda or cuda:N"),
    ({"colour": "red"}, "colour: unknown field"),
    ({"concurrency": 0}, "concurrency: expected an integer from 1 to 1024"),
    ({"rate": 0}, "rate: expected requests per second, a number above 0"),
    ({"temperature": 2.5}, "temperature: expected a number from 0 to 2"),
    ({"extra_body": [1]}, "extra_body: expected a JSON object"),
    ({"api_key_env": "sk-live-abc123"}, "api_key_env: expected the name of an environment "
                                        "variable (letters, digits, '_'), not a key"),
    ({"server_metrics": "ftp://x"}, "server_metrics: expected auto, off or an http(s) URL"),
    ({"system_prompt": "Be brief."}, "system_prompt: applies to served models (openai:) only"),
])
async def test_bad_submissions_are_422_naming_the_field_and_append_nothing(
        daemon: Daemon, dataset: Path, body: dict[str, Any], message: str) -> None:
    full = {"model": "demo:instant", "dataset": str(dataset), **body}
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        r = await c.post("/api/runs", json=full)
    assert r.status_code == 422
    assert message in r.json()["error"]
    assert daemon.live.log.count() == 0


def test_serving_options_travel_to_every_agent_and_back_from_the_log(dataset: Path) -> None:
    spec = submit.parse({"model": "openai:m@http://127.0.0.1:8000/v1", "dataset": str(dataset),
                         "concurrency": 16, "rate": 20, "temperature": 0.3,
                         "system_prompt": "Answer with a letter.", "extra_body": {"top_k": 1},
                         "api_key_env": "VLLM_KEY", "server_metrics": "off"})
    args = spec.agent_args("http://v:8470", 0, Config.load(None))
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--concurrency"] == "16" and flags["--rate"] == "20.0"
    assert flags["--temperature"] == "0.3" and flags["--system-prompt"] == "Answer with a letter."
    assert flags["--extra-body"] == '{"top_k": 1}' and flags["--api-key-env"] == "VLLM_KEY"
    assert flags["--server-metrics"] == "off"
    body = submit.submitted_event(spec)["body"]
    assert body["config"]["concurrency"] == 16 and body["config"]["api_key_env"] == "VLLM_KEY"
    again = LaunchSpec.from_submitted(spec.run, msgspec.convert(body, RunSubmitted))
    assert again.agent_args("http://v:8470", 0, Config.load(None)) == args


async def test_submitting_needs_the_token(daemon: Daemon, dataset: Path) -> None:
    async with httpx.AsyncClient(base_url=daemon.url) as c:
        r = await c.post("/api/runs", json={"model": "demo:instant", "dataset": str(dataset)})
    assert r.status_code == 401


async def test_cancel_refuses_unknown_and_ended_runs(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, headers=AUTH) as c:
        await c.post("/api/events", json=[submitted("r1"), started("r1"), finished("r1")])
        unknown = await c.post("/api/runs/nope/cancel")
        ended = await c.post("/api/runs/r1/cancel")
    assert unknown.status_code == 404
    assert ended.status_code == 409
    assert ended.json()["error"] == "run r1 is already finished"


def test_evaluation_options_travel_from_the_submission_to_the_agents(tmp_path: Path) -> None:
    from vlmd.config import Config
    from vlmd.launch.launcher import LaunchSpec
    from vlmd.launch.submit import parse, submitted_event

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "test-0.parquet").write_bytes(b"read by the agents, not here")
    spec = parse({"model": "demo:instant", "dataset": str(folder / "*.parquet"),
                  "prompt_template": "mmmu", "columns": "id=qid",
                  "judge": "openai:judge@http://127.0.0.1:9/v1"})
    event = submitted_event(spec)
    assert {k: event["body"]["config"][k] for k in ("prompt_template", "columns", "judge")} == {
        "prompt_template": "mmmu", "columns": "id=qid",
        "judge": "openai:judge@http://127.0.0.1:9/v1"}
    again = LaunchSpec.from_submitted(spec.run, msgspec.convert(event["body"], RunSubmitted))
    args = again.agent_args("http://127.0.0.1:1", 0, Config())
    assert args[args.index("--dataset") + 1] == str(folder / "*.parquet")
    assert args[args.index("--prompt-template") + 1] == "mmmu"
    assert args[args.index("--columns") + 1] == "id=qid"
    assert args[args.index("--judge") + 1] == "openai:judge@http://127.0.0.1:9/v1"
    plain = LaunchSpec.from_submitted(spec.run, RunSubmitted(model="demo:instant",
                                                             dataset="d.jsonl"))
    assert "--judge" not in plain.agent_args("http://127.0.0.1:1", 0, Config())
