"""Launchers: how vlmd starts the agents of a submitted run, supervises and cancels them.

`LocalLauncher` runs one ``vlmd-agent`` subprocess per shard on this host. An agent that dies
abnormally (a signal, or an exit status other than 0 = shard finished and 1 = shard failed) is
started again, up to `MAX_RESTARTS` times; the new agent resumes from the first item not
completed. Agents are not stopped when vlmd stops: they keep their events in their outboxes
and deliver them when vlmd is back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

import vlmd_agent.wire as wire
from vlmd.config import Config
from vlmd.tokens import Tokens
from vlmd_agent.catalog import RunSubmitted

log = logging.getLogger("vlmd.launch.launcher")

MAX_RESTARTS = 5
SERVING = ("concurrency", "rate", "temperature", "system_prompt", "extra_body", "api_key_env",
           "server_metrics")
"""The serving options of a run (``vlmd-agent --concurrency`` ...), as submitted."""
RESTART_DELAY_S = 1.0
Append = Callable[[list[dict[str, Any]]], Awaitable[object]]
EVALUATION_OPTIONS = ("prompt_template", "columns", "judge")
"""How the agents read the dataset and score it, passed on as ``--prompt-template``,
``--columns`` and ``--judge`` when set."""


class LaunchError(RuntimeError):
    """A launcher could not start or stop a run's agents; the message says why."""


@dataclass(frozen=True)
class LaunchSpec:
    """One submitted run, as the agents need it."""

    run: str
    model: str
    dataset: str
    shards: int = 1
    limit: int | None = None
    max_new_tokens: int = 32
    device: str = "auto"
    on_hang: str = "report"
    options: dict[str, Any] = field(default_factory=dict)
    serving: dict[str, Any] = field(default_factory=dict)  # `SERVING` options that are set
    prompt_template: str | None = None
    columns: str | None = None
    judge: str | None = None
    preflight: bool = True  # agents check an openai: server before their first item
    fail_after: int | None = None  # the circuit breaker's settings; None: [watchdog]'s
    max_failed: float | None = None

    @classmethod
    def from_submitted(cls, run: str, body: RunSubmitted) -> LaunchSpec:
        """The spec a ``run.submitted`` body recorded (to resubmit shards of an old run)."""
        cfg = body.config or {}
        return cls(run=run, model=body.model, dataset=body.dataset,
                   shards=body.shards or 1, limit=cfg.get("limit"),
                   max_new_tokens=cfg.get("max_new_tokens") or 32,
                   device=cfg.get("device") or "auto", on_hang=cfg.get("on_hang") or "report",
                   options={"name": body.name} if body.name else {},
                   serving={k: cfg[k] for k in SERVING if cfg.get(k) is not None},
                   **{k: cfg.get(k) for k in EVALUATION_OPTIONS},
                   preflight=cfg.get("preflight", True) is not False,
                   fail_after=cfg.get("fail_after"), max_failed=cfg.get("max_failed"))

    def agent_args(self, url: str, shard: int, config: Config) -> list[str]:
        """The ``vlmd-agent`` arguments of one shard (the token travels in the environment)."""
        w = config.watchdog
        args = ["--url", url, "--run", self.run, "--model", self.model,
                "--dataset", self.dataset, "--max-new-tokens", str(self.max_new_tokens),
                "--device", self.device, "--on-hang", self.on_hang,
                "--interval-s", str(w.interval_s), "--heartbeat-s", str(w.heartbeat_s),
                "--hang-after-s", str(w.hang_after_s),
                "--fail-after", str(w.fail_after if self.fail_after is None else self.fail_after),
                "--max-failed", str(w.max_failed if self.max_failed is None else self.max_failed)]
        if not self.preflight:
            args.append("--no-preflight")
        if self.shards > 1:
            args += ["--shard", f"{shard}/{self.shards}"]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        for key, value in self.serving.items():
            text = json.dumps(value) if isinstance(value, dict) else str(value)
            args += [f"--{key.replace('_', '-')}", text]
        for name in EVALUATION_OPTIONS:
            if (value := getattr(self, name)) is not None:
                args += [f"--{name.replace('_', '-')}", value]
        return args


AGENT_PYTHON_FLAGS = ("-P",)
"""Python's "safe path": neither the working directory nor the script's folder goes first on
``sys.path``, so no ``httpx.py`` or ``sitecustomize.py`` lying there runs in the agent."""


def agent_env(base: Mapping[str, str], token: str) -> dict[str, str]:
    """The environment of an agent vlmd starts: `base` (vlmd's) with the run's `token`,
    ``PYTHONSAFEPATH`` set (as ``-P``: for the wrapper the agent starts too) and only the
    absolute entries of ``PYTHONPATH`` (a relative or empty one names the working directory).
    Absolute entries stay: the operator chose them (tests use one to load a ``sitecustomize``
    into agents on purpose)."""
    env = {**base, "VLMD_TOKEN": token, "PYTHONSAFEPATH": "1"}
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


class Launcher(Protocol):
    """Starts a run's agents and stops them; `run` is the long-lived supervising task."""

    kind: str

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def launch(self, spec: LaunchSpec) -> None: ...

    async def cancel(self, run: str) -> int: ...

    async def resume(self, spec: LaunchSpec, shards: list[int]) -> list[int]:
        """Start `shards` again (those not running now); returns the ones started."""
        ...


class LocalLauncher:
    """Agents as local subprocesses, one per shard, logging to ``STATE/agents/RUN-I.log``."""

    kind = "local"

    def __init__(self, config: Config, url: str, tokens: Tokens, append: Append) -> None:
        self.config, self.url, self.tokens, self.append = config, url, tokens, append
        self.logs = config.state_dir / "agents"
        self.procs: dict[tuple[str, int], trio.Process] = {}
        self.cancelled: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Hold the nursery the supervisors live in until vlmd stops."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def launch(self, spec: LaunchSpec) -> None:
        """Start one supervised agent per shard."""
        assert self._nursery is not None, "LocalLauncher.run must be started first"
        self.logs.mkdir(parents=True, exist_ok=True)
        for shard in range(spec.shards):
            self._nursery.start_soon(self._supervise, spec, shard)

    async def cancel(self, run: str) -> int:
        """SIGTERM the run's agents (each stops its wrapper and flushes); returns how many."""
        self.cancelled.add(run)
        procs = [p for (r, _), p in self.procs.items() if r == run and p.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        return len(procs)

    async def stop_agents(self, grace_s: float = 30.0, term_s: float = 10.0) -> int:
        """Wait up to `grace_s` for the agents to end on their own (an agent whose run ended
        exits once vlmd has its last events), then SIGTERM those left (each flushes and stops)
        and wait up to `term_s` more; returns how many still run. For an embedded vlmd, before
        it stops: a daemon that stops first leaves them retrying with nobody to answer."""
        for wait_s, then_stop in ((grace_s, True), (term_s, False)):
            with trio.move_on_after(wait_s):
                while self.procs:
                    await trio.sleep(0.1)
            if not self.procs:
                return 0
            if then_stop:
                for run in {r for r, _ in self.procs}:
                    log.info("run %s: its agents have not exited; stopping them", run)
                    await self.cancel(run)
        return len(self.procs)

    async def resume(self, spec: LaunchSpec, shards: list[int]) -> list[int]:
        """Start agents again for `shards` that have none running; they skip completed items."""
        assert self._nursery is not None, "LocalLauncher.run must be started first"
        if spec.run in self.cancelled and any(r == spec.run for r, _ in self.procs):
            return []  # its cancelled agents are still stopping; once they have, all restart
        self.cancelled.discard(spec.run)
        todo = [i for i in shards if (spec.run, i) not in self.procs]
        self.logs.mkdir(parents=True, exist_ok=True)
        if todo:
            await self.append([wire.envelope(spec.run, "run.scheduled", {
                "scheduler": "local", "job": "local", "shards": todo, "of": spec.shards,
                "resume": True})])
        for shard in todo:
            self._nursery.start_soon(self._supervise, spec, shard)
        return todo

    async def _supervise(self, spec: LaunchSpec, shard: int) -> None:
        shard_text = f"{shard}/{spec.shards}"
        for attempt in range(MAX_RESTARTS + 1):
            code = await self._run_agent(spec, shard)
            if spec.run in self.cancelled or code in (0, 1):
                return
            why = (f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
            then = "restarting" if attempt < MAX_RESTARTS else "giving up"
            body: dict[str, Any] = {"message": f"agent for shard {shard_text} died ({why}); {then}",
                                    "shard": shard_text}
            body.update({"signal": -code} if code < 0 else {"exit_code": code})
            events = [wire.envelope(spec.run, "alert.agent_exited", body)]
            if attempt == MAX_RESTARTS:
                events.append(wire.envelope(spec.run, "run.failed", {
                    "reason": f"agent for shard {shard_text} died {attempt + 1} times ({why})",
                    "shard": shard_text}))
            log.warning("run %s: %s", spec.run, body["message"])
            await self.append(events)
            await trio.sleep(RESTART_DELAY_S)

    async def _run_agent(self, spec: LaunchSpec, shard: int) -> int:
        cmd = [sys.executable, *AGENT_PYTHON_FLAGS, "-m", "vlmd_agent",
               *spec.agent_args(self.url, shard, self.config)]
        env = agent_env(os.environ, self.tokens.mint(spec.run))  # that run's token only
        logfile = self.logs / f"{spec.run}-{shard}.log"
        with logfile.open("ab") as out:
            # a session of its own: a Ctrl-C meant for `vlmd run` (or `vlmd serve`) in a
            # terminal does not reach the agents, which go on. Its working directory is
            # vlmd's own agents folder, not wherever vlmd was started (next to a dataset).
            proc = await trio.lowlevel.open_process(cmd, env=env, stdout=out, stderr=out,
                                                    stdin=subprocess.DEVNULL, cwd=self.logs,
                                                    start_new_session=True)
        self.procs[(spec.run, shard)] = proc
        log.info("run %s: agent for shard %d/%d started (pid %d, log %s)", spec.run, shard,
                 spec.shards, proc.pid, logfile)
        try:
            return await proc.wait()
        finally:
            self.procs.pop((spec.run, shard), None)
