"""Cluster commands: ``vlmd resume`` (resubmit unfinished shards), ``vlmd launch --kubernetes``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any
from urllib.parse import quote

import orjson
import trio

from vlmd.cli.base import CliError, command
from vlmd.cli.client import Client
from vlmd.cli.report import report_table
from vlmd.config import Config
from vlmd.launch import kube, submit
from vlmd.launch.launcher import LaunchSpec
from vlmd.projections.tracker import TERMINAL
from vlmd.tokens import mint
from vlmd_agent import wire

POLL_S = 1.0
PRINT_EVERY_S = 5.0


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")
    p.add_argument("--detach", action="store_true", help="return once the shards are resubmitted")


@command("resume", _resume_args)
def cmd_resume(args: argparse.Namespace, config: Config) -> int:
    """Resubmit a run's unfinished shards (failed, preempted, cancelled) and wait for the run.

    Each shard starts again from its first item vlmd does not hold as completed. Exit status 0
    when the run finishes.

    Example:
        vlmd resume nightly-7b
    """
    async def main() -> dict[str, Any] | None:
        async with Client.of(config) as client:
            done = await client.call("POST", f"/api/runs/{quote(args.run, safe='')}/resume")
            print(f"vlmd: run {done['run']}: resubmitted shards {', '.join(done['shards'])}",
                  file=sys.stderr)
            return None if args.detach else await _wait(client, done["run"])

    state = trio.run(main)
    if state is None:
        return 0
    print(report_table([state]))
    return 0 if state["status"] == "finished" else 1


async def _wait(client: Client, run: str) -> dict[str, Any]:
    """Poll the run until it ends (the daemon's tracker already counts the resubmission)."""
    shown = 0.0
    while True:
        state: dict[str, Any] = await client.call("GET", f"/api/runs/{quote(run, safe='')}")
        if state["status"] in TERMINAL or time.monotonic() - shown >= PRINT_EVERY_S:
            print(f"vlmd: {run} {state['done'] + state['failed']}/{state['total'] or '?'} "
                  f"{state['status']}", file=sys.stderr)
            shown = time.monotonic()
        if state["status"] in TERMINAL:
            return state
        await trio.sleep(POLL_S)


def _launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubernetes", action="store_true",
                   help="print a Kubernetes Indexed Job manifest (JSON) for the run")
    p.add_argument("--model", required=True, help="openai:NAME@BASE_URL, hf:PATH or demo:NAME")
    p.add_argument("--dataset", required=True, help="the dataset's path inside the pods")
    p.add_argument("--image", required=True, help="container image that provides vlmd-agent")
    p.add_argument("--shards", type=int, default=1, help="pods (completion indexes)")
    p.add_argument("--name", help="a human name for the run (with --register)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each shard")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--gpus-per-shard", type=int,
                   help="nvidia.com/gpu per pod (default: launcher.gpus_per_shard, else 1)")
    p.add_argument("--secret", help="use this existing Secret for the token (key 'token') "
                   "instead of the one the manifest holds (a token minted for the run)")
    p.add_argument("--url", help="vlmd's URL as pods reach it (default: launcher.agent_url)")
    p.add_argument("--register", action="store_true",
                   help="record the run in vlmd now (model, dataset, shards, name)")
    p.add_argument("--columns", help="field=column,... for columns vlmd does not know")
    p.add_argument("--prompt-template", help="a prompt family or a template with {question}")
    p.add_argument("--judge", help="openai:NAME@BASE_URL: a model that reads the "
                                   "multiple-choice answers the rules cannot")


@command("launch", _launch_args)
def cmd_launch(args: argparse.Namespace, config: Config) -> int:
    """Print the manifest that runs a sharded evaluation on a cluster's own scheduler.

    The pods' token is a Secret in the manifest (a List of the Secret and the Job) holding a
    token minted for this run: it writes only this run's events. With --secret NAME the Job
    uses that existing Secret instead. Pods report to vlmd's URL, which must be reachable from
    them (see docs/CLUSTER.md).

    Example:
        vlmd launch --kubernetes --model hf:/models/qwen2-vl --dataset /data/mmbench.tsv \\
            --image registry.example/vlmd-agent:1 --shards 8 --url http://vlmd.example:8470 \\
            --register | kubectl apply -f -
    """
    if not args.kubernetes:
        raise CliError("say where: --kubernetes (Slurm runs go through `vlmd run` with "
                       '[launcher] kind = "slurm")')
    if not 1 <= args.shards <= submit.LIMITS["shards"][1]:
        raise CliError(f"--shards must be from 1 to {submit.LIMITS['shards'][1]}")
    if not submit.MODEL_RE.fullmatch(args.model):
        raise CliError("--model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME")
    if args.name is not None and not wire.RUN_RE.fullmatch(args.name):
        raise CliError("--name: letters, digits, '.', '_', '-', ':', starting with one of the "
                       "first two")
    try:
        evaluation = submit.evaluation_options({"prompt_template": args.prompt_template,
                                                "columns": args.columns, "judge": args.judge})
    except submit.SubmitError as e:
        option, _, why = str(e).partition(": ")
        raise CliError(f"--{option.replace('_', '-')}: {why}") from None
    url = (args.url or config.launcher.agent_url or config.url).rstrip("/")
    spec = LaunchSpec(run=wire.new_run_id(), model=args.model, dataset=args.dataset,
                      shards=args.shards, limit=args.limit, max_new_tokens=args.max_new_tokens,
                      options={"name": args.name} if args.name else {},
                      prompt_template=evaluation.get("prompt_template"),
                      columns=evaluation.get("columns"), judge=evaluation.get("judge"))
    gpus = args.gpus_per_shard if args.gpus_per_shard is not None else (
        config.launcher.gpus_per_shard or 1)
    name = args.secret or kube.secret_name(spec.run)
    doc = kube.manifest(spec, url, config, image=args.image, secret=name, gpus_per_shard=gpus)
    if args.secret is None:
        doc = kube.with_secret(doc, kube.secret(spec, mint(_write_token(config), spec.run)))
    if args.register:
        trio.run(_register, config, spec)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"vlmd: run {spec.run}: {spec.shards} shards; the pods read the token from Secret "
          f"{name!r} (key 'token')", file=sys.stderr)
    return 0


def _token_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN", help="a token that writes only RUN's events "
                       "(for agents you start yourself)")
    which.add_argument("--read", action="store_true",
                       help="the read token (server.read_token; for the dashboard: open it "
                            "once with ?token=...)")


@command("token", _token_args)
def cmd_token(args: argparse.Namespace, config: Config) -> int:
    """Print a token: one for a run's agents, or the read token.

    The write token itself never needs printing: it is $VLMD_TOKEN, server.token or the state
    directory's vlmd.token.

    Example:
        VLMD_TOKEN=$(vlmd token --run r-7f3a2b9c01) vlmd-agent --url ... --run r-7f3a2b9c01 ...
    """
    if args.read:
        read = config.resolve_read_token()
        if read is None:
            raise CliError("reads need no token: server.read_token is off")
        if not read:
            raise CliError("no read token yet: vlmd serve makes one (vlmd.read-token in its "
                           "state directory) when it starts with server.read_token on")
        print(read)
        return 0
    if not wire.RUN_RE.fullmatch(args.run):
        raise CliError("--run: a run id: letters, digits, '.', '_', '-', ':'")
    print(mint(_write_token(config), args.run))
    return 0


def _write_token(config: Config) -> str:
    """The daemon's write token, which run tokens are minted under; CliError without it."""
    token = config.resolve_token()
    if not token:
        raise CliError(f"no write token to mint a run's token with: {config.token_hint()}")
    return token


async def _register(config: Config, spec: LaunchSpec) -> None:
    event = submit.submitted_event(spec)
    event["body"]["config"]["launcher"] = "kubernetes"
    async with Client.of(config) as client:
        await client.call("POST", "/api/events", json=[event])
