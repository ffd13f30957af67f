"""``vlmd launch --kubernetes``: the Indexed Job manifest it prints, checked field by field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProcess
from vlmd.launch.kube import job_name
from vlmd_agent import cli as agent_cli

DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def launch(*args: str, config: Path | None = None, token: str = "never-printed-token"
           ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vlmd", "launch", *args]
    cmd += ["--config", str(config)] if config else []
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VLMD_TOKEN": token})


def manifest(*args: str) -> dict[str, Any]:
    done = launch("--kubernetes", "--model", "demo:instant", "--dataset", "/data/mmb.jsonl",
                  "--image", "registry.example/vlmd-agent:1", "--url", "http://vlmd.example:8470",
                  *args)
    assert done.returncode == 0, done.stderr
    assert "never-printed-token" not in done.stdout + done.stderr
    return job_of(json.loads(done.stdout))


def job_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The Job of a printed manifest: alone (``--secret``), or after the Secret holding the
    run's own token in a List."""
    if doc["kind"] == "List":
        secret, job = doc["items"]
        assert secret["kind"] == "Secret" and set(secret["stringData"]) == {"token"}
        return dict(job)
    return doc


def test_the_manifest_is_an_indexed_job_with_one_completion_index_per_shard() -> None:
    job = manifest("--shards", "3", "--limit", "50")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert DNS_1123.fullmatch(job["metadata"]["name"])
    run = job["metadata"]["annotations"]["vlmd/run"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert spec["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example/vlmd-agent:1"
    assert container["command"] == ["vlmd-agent"]
    args = container["args"]
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/3"
    assert args[args.index("--url") + 1] == "http://vlmd.example:8470"
    assert args[args.index("--run") + 1] == run
    assert args[args.index("--limit") + 1] == "50"
    # what the kubelet runs for index 2 is a command line vlmd-agent accepts
    expanded = [a.replace("$(JOB_COMPLETION_INDEX)", "2") for a in args]
    parsed = agent_cli.parser().parse_args(expanded)
    assert (parsed.shard, parsed.dataset, parsed.model) == ("2/3", "/data/mmb.jsonl",
                                                            "demo:instant")


def test_evaluation_options_reach_the_pods() -> None:
    job = manifest("--judge", "openai:j@http://judge.example:8000", "--prompt-template", "mmmu",
                   "--columns", "id=qid")
    [container] = job["spec"]["template"]["spec"]["containers"]
    parsed = agent_cli.parser().parse_args(container["args"])
    assert (parsed.judge, parsed.prompt_template, parsed.columns) == (
        "openai:j@http://judge.example:8000", "mmmu", "id=qid")


def test_the_token_comes_from_a_secret_and_every_pod_requests_its_gpus() -> None:
    container = manifest("--shards", "2", "--gpus-per-shard", "2", "--secret", "eval-token"
                         )["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["VLMD_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "eval-token", "key": "token"}}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"] == {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert container["resources"] == {"requests": {"nvidia.com/gpu": 2},
                                      "limits": {"nvidia.com/gpu": 2}}
    cpu_only = manifest("--gpus-per-shard", "0")["spec"]["template"]["spec"]["containers"][0]
    assert cpu_only["resources"] == {}
    assert "--shard" not in cpu_only["args"]


def test_job_names_are_dns_labels_whatever_the_run_is_called() -> None:
    assert job_name("r-7f3a2b9c01") == "vlmd-r-7f3a2b9c01"
    long = job_name("Nightly_Run.v2:" + "x" * 80)
    assert DNS_1123.fullmatch(long) and len(long) <= 63


def test_launch_without_a_target_says_what_it_needs() -> None:
    done = launch("--model", "demo:instant", "--dataset", "d.jsonl", "--image", "i")
    assert done.returncode == 2
    assert "say where: --kubernetes" in done.stderr


def test_register_records_the_run_in_vlmd_before_any_pod_starts(
        daemon_proc: DaemonProcess, tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f"[server]\nport = {daemon_proc.url.rsplit(':', 1)[1]}\n")
    done = launch("--kubernetes", "--model", "demo:instant", "--dataset", "/data/d.jsonl",
                  "--image", "img", "--shards", "4", "--name", "k8s-nightly", "--register",
                  config=config, token=daemon_proc.token)
    assert done.returncode == 0, done.stderr
    assert daemon_proc.token not in done.stdout
    run = job_of(json.loads(done.stdout))["metadata"]["annotations"]["vlmd/run"]
    state = httpx.get(f"{daemon_proc.url}/api/runs/k8s-nightly", timeout=10).json()
    assert (state["run"], state["model"], state["status"]) == (run, "demo:instant", "submitted")


@pytest.mark.parametrize("bad", [["--shards", "0"], ["--model", "gpt4"], ["--name", "-x"],
                                 ["--judge", "demo:tiny"], ["--columns", "qid"],
                                 ["--prompt-template", "{q}"]])
def test_bad_launch_arguments_are_named(bad: list[str]) -> None:
    args = {"--model": "demo:instant", "--shards": "1", "--name": "ok"}
    args.update(dict(zip(bad[::2], bad[1::2], strict=True)))
    flat = [x for pair in args.items() for x in pair]
    done = launch("--kubernetes", "--dataset", "d", "--image", "i", *flat)
    assert done.returncode == 2
    assert bad[0] in done.stderr
