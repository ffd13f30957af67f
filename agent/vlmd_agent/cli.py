"""``vlmd-agent``: the model side of a run, as the watchdog process that starts the wrapper.

Example::

    VLMD_TOKEN=... vlmd-agent --url http://127.0.0.1:8470 --run r-7f3a \\
        --model demo:instant --dataset demo.jsonl --shard 0/2 --on-hang restart

The token comes from ``$VLMD_TOKEN`` or ``--token-file`` (never the command line, where other
users could read it). Bad arguments print one line naming the argument and exit with status 2.
Set ``$VLMD_CGROUP_DIR`` to read the memory cgroup from that directory instead of finding it
(a container that mounts it elsewhere; tests).

Exit status: 0 the shard finished and vlmd has all its events, 1 it failed, 2 bad arguments
(or another agent holds the spool), 128+N signal N (SIGTERM, SIGINT) stopped it or cut the
final flush short; the spools stay on disk and the next start on the same spool sends them
first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import trio

from vlmd_agent import wire
from vlmd_agent.evaluate import judge, prompts
from vlmd_agent.evaluate.schemas import parse_columns
from vlmd_agent.outbox.spool import Outbox
from vlmd_agent.pipe import WrapperConfig, open_outbox
from vlmd_agent.watch.detect import signal_name
from vlmd_agent.watch.gpu import open_gpus
from vlmd_agent.watch.memory import CgroupPaths, RamReader
from vlmd_agent.watch.sampler import Sampler
from vlmd_agent.watch.server import metrics_url_of
from vlmd_agent.watch.watchdog import Watchdog, WatchdogConfig

log = logging.getLogger("vlmd_agent.watch.watchdog")

EXIT_USAGE = 2
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
STOP_FLUSH_S = 5.0  # the final flush after a stop signal (the spools keep the rest)
PROGRESS_LOG_S = 10.0  # how often a long final flush says what it waits for


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _tokens(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 2:
        raise ValueError(text)
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _env_name(text: str) -> str:
    if not ENV_NAME.fullmatch(text):  # not echoed: it may be the key itself, given by mistake
        raise argparse.ArgumentTypeError("expected the name of an environment variable "
                                         "(letters, digits, '_'), not a key")
    return text


_positive.__name__ = "positive number"  # argparse names the type in its error message
_fraction.__name__ = "fraction in (0, 1]"
_count.__name__ = "non-negative integer"
_tokens.__name__ = "positive integer"
_temperature.__name__ = "temperature from 0 to 2"
_json_object.__name__ = "JSON object"


def parser() -> argparse.ArgumentParser:
    """The ``vlmd-agent`` argument parser."""
    p = _Parser(prog="vlmd-agent", description="Run one shard of a vlmd run under a watchdog.")
    p.add_argument("--url", required=True, help="vlmd's base URL, e.g. http://127.0.0.1:8470")
    p.add_argument("--run", required=True, help="the run id vlmd made")
    p.add_argument("--model", required=True, help="model SPEC (openai:, hf:, demo:)")
    p.add_argument("--dataset", required=True,
                   help="JSONL or VLMEvalKit TSV file, parquet file, folder of parquet shards, "
                        "glob of them, or datasets.save_to_disk folder")
    p.add_argument("--columns", help="field=column,... for a file whose columns vlmd does not "
                                     "know (fields: id, question, answer, image, images, "
                                     "choices, hint, category, l2_category, split, scorer; "
                                     "schema=NAME)")
    p.add_argument("--prompt-template",
                   help="a template family (mmbench, mmmu, scienceqa, ai2d, chartqa, docvqa, "
                        "infovqa, textvqa, short) or a template with {question}, {options}, "
                        "{hint}")
    p.add_argument("--judge", help="openai:NAME@BASE_URL: a model that reads the "
                                   "multiple-choice answers the rules cannot")
    p.add_argument("--shard", help="this agent's share, i/n (default: everything)")
    p.add_argument("--limit", type=_count, help="at most this many items of the share")
    p.add_argument("--max-new-tokens", type=_tokens, default=32)
    p.add_argument("--device", default="auto", help="for in-process models (hf:)")
    p.add_argument("--spool", help="spool directory (default $VLMD_HOME/spool/RUN-I-N, "
                                   "VLMD_HOME defaulting to ~/.cache/vlmd)")
    p.add_argument("--interval-s", type=_positive, default=0.05, help="sampling period")
    p.add_argument("--heartbeat-s", type=_positive, default=1.0)
    p.add_argument("--hang-after-s", type=_positive, default=120.0,
                   help="silence while evaluating that counts as a hang")
    p.add_argument("--loading-hang-s", type=_positive, default=600.0,
                   help="silence allowed while starting, loading or finishing up")
    p.add_argument("--on-hang", choices=("report", "restart"), default="report")
    p.add_argument("--max-restarts", type=_count, default=3)
    p.add_argument("--vram-high", type=_fraction, default=0.95)
    p.add_argument("--ram-high", type=_fraction, default=0.95)
    p.add_argument("--fail-after", type=_count, default=10,
                   help="circuit breaker: fail the run when its first N items all fail with "
                        "the same error (0: no breaker)")
    p.add_argument("--max-failed", type=_fraction, default=0.5,
                   help="circuit breaker: fail the run when more than this fraction of its "
                        "items failed, once --fail-after items are done (1: never)")
    p.add_argument("--no-preflight", action="store_true",
                   help="do not ask an openai: server for its models before the first item")
    p.add_argument("--stop-timeout-s", type=_positive, default=20.0,
                   help="after SIGTERM, how long the wrapper may take before SIGKILL")
    p.add_argument("--token-file", type=Path, help="file holding the token (else $VLMD_TOKEN)")
    serving = p.add_argument_group("serving models (openai:)")
    serving.add_argument("--concurrency", type=_tokens, default=1,
                         help="requests in flight at once (default 1)")
    serving.add_argument("--rate", type=_positive,
                         help="start requests at this fixed rate per second (capped by "
                              "--concurrency in flight)")
    serving.add_argument("--temperature", type=_temperature, default=0.0,
                         help="sampling temperature (default 0: greedy)")
    serving.add_argument("--system-prompt", help="a system message before every question")
    serving.add_argument("--extra-body", type=_json_object,
                         help="JSON object merged into every request body, e.g. "
                              "'{\"top_p\": 0.9}'")
    serving.add_argument("--api-key-env", type=_env_name,
                         help="environment variable holding the API key (default "
                              "OPENAI_API_KEY, if set); never the key itself")
    serving.add_argument("--server-metrics", default="auto", metavar="URL|auto|off",
                         help="the engine's Prometheus /metrics (vLLM, SGLang); auto: found "
                              "beside the model's URL")
    serving.add_argument("--server-metrics-s", type=_positive, default=0.25,
                         help="how often /metrics is read (default 0.25 s)")
    return p


def config(argv: Sequence[str] | None = None,
           environ: dict[str, str] | None = None) -> WatchdogConfig:
    """Parse the command line (and environment) into a config; exits 2 on a bad argument."""
    p = parser()
    args = p.parse_args(argv)
    env = dict(os.environ) if environ is None else environ
    if httpx.URL(args.url).scheme not in ("http", "https") or not httpx.URL(args.url).host:
        p.error(f"argument --url: {args.url!r} is not http://HOST:PORT")
    if wire.RUN_RE.fullmatch(args.run) is None:
        p.error(f"argument --run: {args.run!r} is not a run id (letters, digits, . _ - :)")
    index, count = 0, 1
    if args.shard is not None:
        try:
            index, count = wire.shard_of(args.shard)
        except ValueError as e:
            p.error(f"argument --shard: {e}")
    token = env.get("VLMD_TOKEN", "")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            p.error(f"argument --token-file: cannot read it ({e.strerror})")
    if not token:
        p.error("no token: set $VLMD_TOKEN or pass --token-file")
    home = Path(env.get("VLMD_HOME") or Path.home() / ".cache" / "vlmd")
    spool = args.spool or str(home / "spool" / f"{args.run}-{index}-{count}")
    cgroup = None
    if env.get("VLMD_CGROUP_DIR"):
        directory = Path(env["VLMD_CGROUP_DIR"])
        cgroup = CgroupPaths(1 if (directory / "memory.usage_in_bytes").exists() else 2, directory)
    for name, check in (("--columns", parse_columns), ("--prompt-template", prompts.check),
                        ("--judge", judge.check)):
        value = getattr(args, name[2:].replace("-", "_"))
        if value is not None:
            try:
                check(value)
            except ValueError as e:
                p.error(f"argument {name}: {e}")
    wrapper = WrapperConfig(url=args.url.rstrip("/"), run=args.run, model=args.model,
                            dataset=args.dataset, spool=spool, shard=args.shard,
                            limit=args.limit, max_new_tokens=args.max_new_tokens,
                            device=args.device, concurrency=args.concurrency, rate=args.rate,
                            temperature=args.temperature, system_prompt=args.system_prompt,
                            extra_body=args.extra_body, api_key_env=args.api_key_env,
                            prompt_template=args.prompt_template, columns=args.columns,
                            judge=args.judge, preflight=not args.no_preflight)
    return WatchdogConfig(
        wrapper, token, interval_s=args.interval_s, heartbeat_s=args.heartbeat_s,
        hang_after_s=args.hang_after_s, loading_hang_s=args.loading_hang_s,
        on_hang=args.on_hang, max_restarts=args.max_restarts, vram_high=args.vram_high,
        ram_high=args.ram_high, stop_timeout_s=args.stop_timeout_s, cgroup=cgroup,
        server_metrics=server_metrics(p, args), server_metrics_s=args.server_metrics_s,
        server_metrics_guessed=args.server_metrics == "auto", fail_after=args.fail_after,
        max_failed=args.max_failed)


def server_metrics(p: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The /metrics URL to read: as given, found beside an openai: model's URL (auto), or
    None (off, or a model that is not served)."""
    if args.server_metrics == "off":
        return None
    if args.server_metrics == "auto":
        return metrics_url_of(args.model)
    url = httpx.URL(args.server_metrics)
    if url.scheme not in ("http", "https") or not url.host:
        p.error(f"argument --server-metrics: {args.server_metrics!r} is not an http(s) URL, "
                "auto or off")
    return str(args.server_metrics)


async def run_agent(cfg: WatchdogConfig) -> int:
    """Run the shard under a `Watchdog`, then flush the spools; returns the exit status.

    Signals: the first SIGTERM/SIGINT stops the wrapper (SIGTERM, then SIGKILL after
    ``stop_timeout_s``), a second kills it at once; during the final flush one ends the wait.
    Resources: the spool directory (``watchdog.db``, and ``wrapper.db`` for the events the
    wrapper reports), a GPU source, the wrapper process.
    """
    spool = Path(cfg.wrapper.spool)
    spool.mkdir(parents=True, exist_ok=True)
    try:
        box = Outbox(spool / "watchdog.db", cfg.wrapper.url, cfg.token).start()
    except RuntimeError as e:
        log.error("%s: is another vlmd-agent running this shard?", e)
        return EXIT_USAGE
    try:
        items = open_outbox(cfg.wrapper, cfg.token).start()
    except RuntimeError as e:  # a wrapper this agent's predecessor lost track of holds it
        box.close(flush_timeout=0)
        log.error("%s: is a wrapper of an earlier agent still running this shard?", e)
        return EXIT_USAGE
    sampler = Sampler(open_gpus(interval_s=cfg.interval_s), cfg.interval_s,
                      ram=RamReader(cfg.cgroup))
    shard = f" shard {cfg.wrapper.shard}" if cfg.wrapper.shard else ""
    log.info("watchdog pid %d for run %s%s; sampling every %g s (GPU: %s%s); spool %s",
             os.getpid(), cfg.wrapper.run, shard, cfg.interval_s, sampler.gpus.kind,
             f", {sampler.gpus.reason}" if sampler.gpus.reason else "", spool)
    dog = Watchdog(cfg, box, sampler, items)
    flushing = trio.CancelScope()
    interrupted: list[int] = []  # a signal that cut the final flush short

    async def on_signals(task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if dog.ended:
                    log.warning("%s: no longer waiting for vlmd", signal_name(signum))
                    interrupted.append(signum)
                    flushing.cancel()
                else:
                    log.warning("%s: stopping", signal_name(signum))
                    dog.stop(signum)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(on_signals)
            code = await dog.run()
            if dog.stopping is not None:
                flushing.deadline = trio.current_time() + STOP_FLUSH_S
            with flushing:
                await _flush_spools(cfg, [box, items])
            nursery.cancel_scope.cancel()
    finally:
        sampler.close()
        box.close(flush_timeout=0)
        items.close(flush_timeout=0)
    if interrupted:  # finished or not, vlmd does not know it all yet
        code = 128 + interrupted[0]
    log.info("agent exits with status %d", code)
    return code


async def _flush_spools(cfg: WatchdogConfig, boxes: list[Outbox]) -> None:
    """Send what the watchdog's spool and the wrapper's hold until both are empty, logging
    progress; cancelled (a signal, a deadline), it leaves the rest in the spool files."""
    said = trio.current_time() - PROGRESS_LOG_S + 1.0  # quiet for the usual second
    try:
        while waiting := sum(b.backlog() for b in boxes):
            if trio.current_time() - said >= PROGRESS_LOG_S:
                said = trio.current_time()
                errors = sorted({b.stats().last_error or "sending" for b in boxes})
                log.warning("waiting for vlmd at %s to take the %d events left in the spools "
                            "(%s)", cfg.wrapper.url, waiting, "; ".join(errors))
            for b in boxes:
                await trio.to_thread.run_sync(b.flush, 1.0)
    finally:
        if left := sum(b.backlog() for b in boxes):
            log.warning("%d events not sent; they stay in %s for the next start", left,
                        cfg.wrapper.spool)


def main(argv: Sequence[str] | None = None) -> int:
    """``vlmd-agent``; see the module docstring for the exit status."""
    cfg = config(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per POST otherwise
    return trio.run(run_agent, cfg)
