"""The commands that run evaluations: ``vlmd run``, ``vlmd demo``, ``vlmd report``, ``vlmd cancel``.

They talk to the daemon the config names; when none answers, ``run`` and ``demo`` start an
embedded one in the same process, which stops when they end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vlmd.cli.base import CliError, command
from vlmd.cli.client import Client, answers, call
from vlmd.cli.follow import follow, report_table
from vlmd.config import Config
from vlmd.daemon.serve import serve
from vlmd.launch.launcher import LocalLauncher
from vlmd.launch.submit import SubmitError, evaluation_options

DEMO_MODELS = ("demo:tiny", "demo:small")


@asynccontextmanager
async def connect(config: Config) -> AsyncIterator[tuple[Client, bool]]:
    """A client of the configured daemon, or of an embedded one started here (True)."""
    if await answers(config.url):
        async with Client.of(config) as client:
            yield client, False
        return
    print(f"vlmd: no daemon at {config.url}; starting one here (log {config.log.path})",
          file=sys.stderr)
    async with trio.open_nursery() as nursery:
        try:
            daemon = await nursery.start(serve, config)
        except OSError as e:
            raise CliError(f"cannot start vlmd on {config.url}: {e}") from None
        client = Client(daemon.url, daemon.token)
        try:
            yield client, True
            launcher = daemon.launcher  # not on Ctrl-C: vlmd stops at once then
            if isinstance(launcher, LocalLauncher) and (left := await launcher.stop_agents()):
                print(f"vlmd: {left} agent(s) still running; their spools keep their events",
                      file=sys.stderr)
        finally:
            await client.aclose()
            daemon.shutdown.set()


async def run_one(client: Client, body: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Submit a run, show its progress until it ends, save its answers.csv; returns its state."""
    submitted = await client.call("POST", "/api/runs", json=body)
    run = submitted["run"]
    print(f"vlmd: run {run} submitted ({body['model']} on {body['dataset']}); "
          f"dashboard: {client.url}/run.html?run={run}", file=sys.stderr)
    await follow(client.url.replace("http", "ws", 1), run, 0)
    state = await client.call("GET", f"/api/runs/{run}")
    csv = await client.call("GET", f"/api/runs/{run}/answers.csv")
    path = out_dir / f"{state['name'] or run}" / "answers.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv.content)
    state["answers_csv"] = str(path)
    return dict(state)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="openai:NAME@BASE_URL, hf:PATH or demo:NAME")
    p.add_argument("--dataset", required=True,
                   help="JSONL or VLMEvalKit TSV file, parquet file, folder of parquet shards "
                        "(or a glob of them), or datasets.save_to_disk folder")
    p.add_argument("--columns", help="field=column,... for columns vlmd does not know "
                                     "(docs/DATASETS.md)")
    p.add_argument("--prompt-template", help="a prompt family (mmbench, mmmu, ...) or a "
                                             "template with {question}, {options}, {hint}")
    p.add_argument("--judge", help="openai:NAME@BASE_URL: a model that reads the "
                                   "multiple-choice answers the rules cannot")
    p.add_argument("--name", help="a human name for the run")
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--shards", type=int, default=1, help="agents to split the items over")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--on-hang", choices=("report", "restart"), default="report")
    p.add_argument("--out", default="vlmd-out", help="folder for answers.csv (default vlmd-out)")
    serving = p.add_argument_group("serving (openai: models; --concurrency and --rate: any)")
    serving.add_argument("--concurrency", type=int, help="requests in flight per agent "
                                                         "(default 1)")
    serving.add_argument("--rate", type=float, help="start requests at this fixed rate per "
                                                    "second per agent (a load test), at most "
                                                    "--concurrency in flight")
    serving.add_argument("--temperature", type=float, help="sampling temperature (default 0)")
    serving.add_argument("--system-prompt", help="a system message before every question")
    serving.add_argument("--extra-body", metavar="JSON",
                         help="JSON object merged into every request, e.g. '{\"top_p\": 0.9}'")
    serving.add_argument("--api-key-env", metavar="NAME",
                         help="the environment variable (of the agents) that holds the API key; "
                              "default OPENAI_API_KEY when set")
    serving.add_argument("--server-metrics", metavar="URL|auto|off",
                         help="the engine's Prometheus metrics (default auto: BASE_URL/metrics)")


def serving_body(args: argparse.Namespace) -> dict[str, Any]:
    """The serving options given on the command line, as `POST /api/runs` fields."""
    body: dict[str, Any] = {}
    for key in ("concurrency", "rate", "temperature", "system_prompt", "api_key_env",
                "server_metrics"):
        if (value := getattr(args, key)) is not None:
            body[key] = value
    if args.extra_body is not None:
        try:
            body["extra_body"] = json.loads(args.extra_body)
        except ValueError as e:
            raise CliError(f"--extra-body: not JSON ({e})") from None
    return body


@command("run", _run_args)
def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """Evaluate a model on a dataset, with a progress bar, then print the summary.

    Example:
        vlmd run --model demo:tiny --dataset demo.jsonl --name tiny-check --limit 50
        vlmd run --model openai:qwen2-vl@http://127.0.0.1:8000/v1 --dataset mmbench.tsv \\
            --concurrency 32 --api-key-env VLLM_KEY --extra-body '{"top_k": 1}'
        vlmd run --model openai:qwen2-vl@http://127.0.0.1:8000 --dataset mmbench_dev/ \\
            --judge openai:qwen2.5-7b@http://127.0.0.1:8001
    """
    body = {"model": args.model, "dataset": str(Path(args.dataset).resolve()),
            "shards": args.shards, "max_new_tokens": args.max_new_tokens,
            "on_hang": args.on_hang, **serving_body(args)}
    body.update({k: v for k, v in (("name", args.name), ("limit", args.limit)) if v is not None})
    try:
        body.update(evaluation_options({"prompt_template": args.prompt_template,
                                        "columns": args.columns, "judge": args.judge}))
    except SubmitError as e:
        option, _, why = str(e).partition(": ")
        raise CliError(f"--{option.replace('_', '-')}: {why}") from None

    async def main() -> dict[str, Any]:
        async with connect(config) as (client, _):
            return await run_one(client, body, Path(args.out))

    state = trio.run(main)
    print(report_table([state]))
    print(f"answers.csv: {state['answers_csv']}")
    return 0 if state["status"] == "finished" else 1


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exit", action="store_true", help="end when the runs finish")
    p.add_argument("--limit", type=int, help="items per model (default: all ~200)")
    p.add_argument("--out", default="vlmd-out", help="folder for answers.csv (default vlmd-out)")


@command("demo", _demo_args)
def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """Build the demo models and dataset (first use), run both, and keep the dashboard up.

    Example:
        vlmd demo --exit
    """
    from vlmd_agent.evaluate import demo_data

    home = Path(os.environ.get("VLMD_HOME") or Path.home() / ".cache" / "vlmd").expanduser()
    dataset = demo_data.build(home / "demo-data")

    async def main() -> list[dict[str, Any]]:
        async with connect(config) as (client, embedded):
            states = []
            for model in DEMO_MODELS:
                body: dict[str, Any] = {"model": model, "dataset": str(dataset),
                                        "name": model.replace(":", "-")}
                if args.limit:
                    body["limit"] = args.limit
                states.append(await run_one(client, body, Path(args.out)))
            print(report_table(states))
            for state in states:
                print(f"answers.csv ({state['model']}): {state['answers_csv']}")
            if not args.exit:
                print(f"dashboard: {client.url}/ (Ctrl-C to stop)", file=sys.stderr)
                if embedded:
                    await trio.sleep_forever()
            return states

    try:
        states = trio.run(main)
    except KeyboardInterrupt:
        return 0
    return 0 if all(s["status"] == "finished" for s in states) else 1


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or names (default: all)")


@command("report", _report_args)
def cmd_report(args: argparse.Namespace, config: Config) -> int:
    """Compare runs by accuracy and cost: TTFT p50/p99, TPOT p50, peak VRAM delta, items/s.

    Example:
        vlmd report nightly-7b nightly-13b
    """
    async def main() -> list[dict[str, Any]]:
        async with Client.of(config) as client:
            runs = args.runs or [r["run"] for r in (await client.call("GET", "/api/runs"))["runs"]]
            return [await client.call("GET", f"/api/runs/{run}") for run in runs]

    states = trio.run(main)
    if not states:
        raise CliError("no runs yet; start one with `vlmd run` or `vlmd demo`")
    print(report_table(states))
    return 0


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")


@command("cancel", _cancel_args)
def cmd_cancel(args: argparse.Namespace, config: Config) -> int:
    """Stop a run's agents cleanly and mark the run cancelled.

    Example:
        vlmd cancel nightly-7b
    """
    result = call(config, "POST", f"/api/runs/{args.run}/cancel")
    print(f"run {result['run']} cancelled ({result['agents_stopped']} agents stopped)")
    return 0
