"""The commands that run evaluations: ``vlmd run``, ``vlmd demo``, ``vlmd cancel``, ``vlmd follow``.

They talk to the daemon the config names; when none answers, ``run`` and ``demo`` start an
embedded one in the same process, which stops when they end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from vlmd.cli.attach import EXIT_DETACHED, ending_lines, exit_status, watch
from vlmd.cli.base import CliError, command, unwrapped
from vlmd.cli.client import Client, answers, call
from vlmd.cli.follow import follow
from vlmd.cli.report import report_table
from vlmd.config import Config
from vlmd.daemon.serve import serve
from vlmd.launch.launcher import LocalLauncher
from vlmd.launch.submit import SubmitError, evaluation_options

DEMO_MODELS = ("demo:tiny", "demo:small")


@dataclass
class Session:
    """A client of the daemon a command runs against; `embedded`: started here, it stops when
    the command ends (`keep_agents`: without stopping the agents it launched first)."""

    client: Client
    embedded: bool
    keep_agents: bool = False


@asynccontextmanager
async def connect(config: Config) -> AsyncIterator[Session]:
    """A session with the configured daemon, or with an embedded one started here, whose log
    lines go to a file (not the terminal, where they would break the progress bar)."""
    if await answers(config.url):
        async with Client.of(config) as client:
            yield Session(client, False)
        return
    logfile = config.state_dir / "vlmd.log"
    print(f"vlmd: no daemon at {config.url}; starting one here (log {config.log.path}, its "
          f"messages in {logfile})", file=sys.stderr)
    with _logging_to(logfile):
        async with trio.open_nursery() as nursery:
            try:
                daemon = await nursery.start(serve, config)
            except OSError as e:
                raise CliError(f"cannot start vlmd on {config.url}: {e}") from None
            session = Session(Client(daemon.url, daemon.token), True)
            try:
                yield session
                launcher = daemon.launcher  # not on Ctrl-C: vlmd stops at once then
                if (isinstance(launcher, LocalLauncher) and not session.keep_agents
                        and (left := await launcher.stop_agents())):
                    print(f"vlmd: {left} agent(s) still running; their spools keep their "
                          "events", file=sys.stderr)
            finally:
                await session.client.aclose()
                daemon.shutdown.set()


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Send every log record to `path` instead of the terminal, for the duration."""
    root = logging.getLogger()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    before = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = before
        handler.close()


async def run_one(session: Session, body: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Submit a run, show its progress until it ends, save its answers.csv; returns its state
    (with ``answers_csv``), or None when a Ctrl-C left it running."""
    client = session.client
    submitted = await client.call("POST", "/api/runs", json=body)
    run = submitted["run"]
    print(f"vlmd: run {run} submitted ({body['model']} on {body['dataset']}); "
          f"dashboard: {client.url}/run.html?run={run}", file=sys.stderr)
    if await watch(client, run, embedded=session.embedded) == "detached":
        session.keep_agents = True
        raise Detached(run)
    state = await client.call("GET", f"/api/runs/{run}")
    csv = await client.call("GET", f"/api/runs/{run}/answers.csv")
    # the id keeps two runs of one name apart
    path = out_dir / (f"{state['name']}-{run}" if state["name"] else run) / "answers.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv.content)
    state["answers_csv"] = str(path)
    return dict(state)


class Detached(Exception):
    """A Ctrl-C left the run going on without this command."""


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
    p.add_argument("--no-preflight", action="store_true",
                   help="do not ask an openai: server for its models (or look into an hf: "
                        "folder) before the run; for servers without /v1/models")
    p.add_argument("--fail-after", type=int, metavar="N",
                   help="fail the run when its first N items all fail alike (0: never; "
                        "default: [watchdog] fail_after, 10)")
    p.add_argument("--max-failed", type=float, metavar="FRACTION",
                   help="fail the run when more than this fraction of its items failed "
                        "(default: [watchdog] max_failed, 0.5)")
    p.add_argument("--out", default="vlmd-out",
                   help="folder for NAME-RUN/answers.csv (default vlmd-out)")
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

    The model and dataset are checked before anything runs (--no-preflight skips the model
    check); a run whose first items all fail alike stops as failed. Ctrl-C leaves the run going
    on (or cancels it: you are asked); `vlmd follow RUN` attaches again.

    Exit status: 0 finished with no failed item, 1 failed or cancelled, 2 a usage error,
    3 finished with failed items, 130 left running after Ctrl-C.

    Example:
        vlmd run --model demo:tiny --dataset demo.jsonl --name tiny-check --limit 50
        vlmd run --model openai:qwen2-vl@http://127.0.0.1:8000/v1 --dataset mmbench.tsv \\
            --concurrency 32 --api-key-env VLLM_KEY --extra-body '{"top_k": 1}'
        vlmd run --model openai:qwen2-vl@http://127.0.0.1:8000 --dataset mmbench_dev/ \\
            --judge openai:qwen2.5-7b@http://127.0.0.1:8001
    """
    model = args.model
    if model.startswith("hf:") and not Path(model[3:]).expanduser().is_absolute():
        model = f"hf:{Path(model[3:]).expanduser().resolve()}"  # the daemon's cwd is not ours
    body: dict[str, Any] = {"model": model, "dataset": str(Path(args.dataset).resolve()),
                            "shards": args.shards, "max_new_tokens": args.max_new_tokens,
                            "on_hang": args.on_hang, **serving_body(args)}
    body.update({k: v for k, v in (("name", args.name), ("limit", args.limit),
                                   ("fail_after", args.fail_after),
                                   ("max_failed", args.max_failed)) if v is not None})
    if args.no_preflight:
        body["preflight"] = False
    try:
        body.update(evaluation_options({"prompt_template": args.prompt_template,
                                        "columns": args.columns, "judge": args.judge}))
    except SubmitError as e:
        option, _, why = str(e).partition(": ")
        raise CliError(f"--{option.replace('_', '-')}: {why}") from None

    async def main() -> dict[str, Any]:
        async with connect(config) as session:
            return await run_one(session, body, Path(args.out))

    try:
        state = unwrapped(trio.run, main)
    except Detached:
        return EXIT_DETACHED
    print(report_table([state]))
    print("\n".join(ending_lines(state)))
    print(f"answers.csv: {state['answers_csv']}")
    return exit_status(state)


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
        async with connect(config) as session:
            states = []
            for model in DEMO_MODELS:
                body: dict[str, Any] = {"model": model, "dataset": str(dataset),
                                        "name": model.replace(":", "-")}
                if args.limit:
                    body["limit"] = args.limit
                states.append(await run_one(session, body, Path(args.out)))
            print(report_table(states))
            for state in states:
                print(f"answers.csv ({state['model']}): {state['answers_csv']}")
            if not args.exit:
                print(f"dashboard: {session.client.url}/ (Ctrl-C to stop)", file=sys.stderr)
                if session.embedded:
                    await trio.sleep_forever()
            return states

    try:
        states = unwrapped(trio.run, main)
    except KeyboardInterrupt:
        return 0
    except Detached:
        return EXIT_DETACHED
    return max(exit_status(s) for s in states)


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")


@command("cancel", _cancel_args)
def cmd_cancel(args: argparse.Namespace, config: Config) -> int:
    """Stop a run's agents cleanly and mark the run cancelled.

    Example:
        vlmd cancel nightly-7b
    """
    result = call(config, "POST", f"/api/runs/{quote(args.run, safe='')}/cancel")
    print(f"run {result['run']} cancelled ({result['agents_stopped']} agents stopped)")
    return 0


def _follow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id or name")


@command("follow", _follow_args)
def cmd_follow(args: argparse.Namespace, config: Config) -> int:
    """Show a run's progress bar until it ends (any run: also one `vlmd run` left after a
    Ctrl-C), then its summary; the exit status is `vlmd run`'s. Ctrl-C leaves the run going.

    Example:
        vlmd follow nightly-7b
    """
    async def main() -> dict[str, Any]:
        async with Client.of(config) as client:
            run = (await client.call("GET", f"/api/runs/{quote(args.run, safe='')}"))["run"]
            try:
                await follow(client.url.replace("http", "ws", 1), run, 0,
                             token=client.token)
            except KeyboardInterrupt:
                print(f"\nvlmd: run {run} goes on (follow it: vlmd follow {run}; cancel it: "
                      f"vlmd cancel {run})", file=sys.stderr)
                raise Detached(run) from None
            return dict(await client.call("GET", f"/api/runs/{run}"))

    try:
        state = unwrapped(trio.run, main)
    except Detached:
        return EXIT_DETACHED
    print(report_table([state]))
    print("\n".join(ending_lines(state)))
    return exit_status(state)
