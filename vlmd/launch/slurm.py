"""The Slurm launcher: a run's shards as one ``sbatch --array`` job, supervised through Slurm.

Task ``i`` of the array runs ``vlmd-agent --shard i/N`` against vlmd's URL. The job script reads
the run's token (minted for that run: it writes that run's events only) from an environment file
with mode 0600 beside it (never the command line, which every user of a node can see). vlmd
polls ``scontrol show job -o`` (no accounting needed) every ``launcher.poll_s`` seconds and
turns what Slurm says into events:

- ``run.scheduled``: the job id and the shards it holds (also for each ``vlmd resume``);
- ``scheduler.task``: each change of a task: PENDING with its reason, RUNNING on a node, its end
  state (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED, ...) with
  the exit code and signal;
- ``run.failed`` for the shard when a task ends badly and its agent cannot have said so itself
  (anything but the agent's own "shard failed" exit status 1): a lost node, a time limit, the
  OOM killer, a ``scancel``.

``cancel`` runs ``scancel``; ``resume`` submits the named shards again as a new array job, whose
agents skip the items vlmd already holds as completed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from vlmd.config import Config
from vlmd.launch.launcher import Append, LaunchSpec
from vlmd.launch.slurm_job import (
    AGENT_FAILED_EXIT,
    BAD,
    ENDED,
    SlurmError,
    TaskInfo,
    array_spec,
    describe,
    parse_jobs,
    slurm,
    write_job,
)
from vlmd.store.log import Event
from vlmd.tokens import Tokens
from vlmd_agent import wire
from vlmd_agent.catalog import RunScheduled, SchedulerTask

log = logging.getLogger("vlmd.launch.slurm")

ADOPT_KINDS = ("run.scheduled", "scheduler.task", "run.cancelled")


@dataclass
class Task:
    """One array task of a run's job, and the last thing Slurm said about it."""

    run: str
    job: str
    index: int
    of: int
    fact: tuple[str, str, str, int] = ("", "", "", 0)  # state, reason, node, restarts

    @property
    def id(self) -> str:
        return f"{self.job}_{self.index}"

    @property
    def ended(self) -> bool:
        return self.fact[0] in ENDED


class SlurmLauncher:
    """Runs' shards as Slurm array jobs; job files go to ``launcher.job_dir``/RUN."""

    kind = "slurm"

    def __init__(self, config: Config, url: str, tokens: Tokens, append: Append) -> None:
        self.config, self.url, self.tokens, self.append = config, url, tokens, append
        self.job_dir = Path(config.launcher.job_dir or config.state_dir / "slurm").resolve()
        self.tasks: dict[tuple[str, int], Task] = {}
        self.cancelled: set[str] = set()

    def adopt(self, events: Iterable[Event]) -> None:
        """Supervise the jobs an earlier vlmd submitted: `events` are the log's `ADOPT_KINDS`."""
        for e in events:
            b = e.body
            if e.kind == "run.cancelled":
                self.cancelled.add(e.run)
            elif isinstance(b, RunScheduled) and b.scheduler == "slurm":
                for i in b.shards:
                    self.tasks[(b.job, i)] = Task(e.run, b.job, i, b.of)
            elif isinstance(b, SchedulerTask) and b.scheduler == "slurm":
                job, _, index = b.job.partition("_")
                task = self.tasks.get((job, int(index or 0)))
                if task is not None:
                    task.fact = (b.state, b.reason or "", b.node or "", b.restarts or 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll Slurm for the runs' jobs until vlmd stops; an outage is logged once."""
        task_status.started()
        failing = False
        while True:
            try:
                await self.poll()
                failing = False
            except SlurmError as e:
                if not failing:
                    log.warning("cannot ask Slurm about the runs' jobs: %s", e)
                failing = True
            await trio.sleep(self.config.launcher.poll_s)

    async def launch(self, spec: LaunchSpec) -> None:
        """Submit every shard as one array job; a refusal fails the run with sbatch's answer."""
        try:
            await self.submit(spec, list(range(spec.shards)))
        except (SlurmError, OSError) as e:
            log.error("run %s: %s", spec.run, e)
            await self.append([wire.envelope(spec.run, "run.failed", {
                "reason": f"cannot submit to Slurm: {e}"}, key=f"{spec.run}/slurm/refused")])

    async def resume(self, spec: LaunchSpec, shards: list[int]) -> list[int]:
        """Submit `shards` again, except those with a task still queued or running."""
        self.cancelled.discard(spec.run)
        busy = {t.index for t in self.tasks.values() if t.run == spec.run and not t.ended}
        todo = [i for i in shards if i not in busy]
        if todo:
            await self.submit(spec, todo, resume=True)
        return todo

    async def cancel(self, run: str) -> int:
        """``scancel`` the run's jobs; returns how many of its tasks were queued or running."""
        live = [t for t in self.tasks.values() if t.run == run and not t.ended]
        self.cancelled.add(run)
        for job in sorted({t.job for t in live}):
            try:
                await slurm("scancel", job)
            except SlurmError as e:  # it ended since the last poll: nothing left to stop
                if "completed" not in str(e) and "Invalid job id" not in str(e):
                    raise
        return len(live)

    async def submit(self, spec: LaunchSpec, shards: list[int], *, resume: bool = False) -> str:
        """Write the job files, ``sbatch`` the array of `shards`; returns the job id."""
        folder = self.job_dir / spec.run
        url = self.config.launcher.agent_url.rstrip("/") or self.url
        script = await trio.to_thread.run_sync(write_job, spec, url, self.tokens.mint(spec.run),
                                               self.config, folder)
        out = await slurm("sbatch", "--parsable", f"--array={array_spec(shards)}",
                          f"--output={folder}/%A_%a.log", f"--chdir={folder}", str(script))
        job = out.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch failed: expected a job id, got {out.strip()[:200]!r}")
        for i in shards:
            self.tasks[(job, i)] = Task(spec.run, job, i, spec.shards)
        body: dict[str, Any] = {"scheduler": "slurm", "job": job, "shards": shards,
                                "of": spec.shards, "script": str(script), "resume": resume}
        await self.append([wire.envelope(spec.run, "run.scheduled", body,
                                         key=f"{spec.run}/slurm/{job}")])
        log.info("run %s: Slurm job %s holds shards %s of %d", spec.run, job,
                 array_spec(shards), spec.shards)
        return job

    async def poll(self) -> None:
        """Ask Slurm about every job with a task not yet ended; append what changed."""
        for job in sorted({t.job for t in self.tasks.values() if not t.ended}, key=int):
            try:
                text = await slurm("scontrol", "show", "job", "-o", job)
            except SlurmError as e:
                if "Invalid job id" not in str(e):
                    raise
                text = ""
            events: list[dict[str, Any]] = []
            seen: set[int] = set()
            for info in parse_jobs(text):
                for i in info.indices:
                    task = self.tasks.get((job, i))
                    if task is not None:
                        seen.add(i)
                        events += self._observe(task, info)
            gone = TaskInfo(job, (), "VANISHED", "slurm no longer knows the job", "", 0, 0, 0)
            for task in [t for t in self.tasks.values() if t.job == job and not t.ended]:
                if task.index not in seen:
                    events += self._observe(task, replace(gone, node=task.fact[2]))
            if events:
                await self.append(events)

    def _observe(self, task: Task, info: TaskInfo) -> list[dict[str, Any]]:
        fact = (info.state, info.reason, info.node, info.restarts)
        if fact == task.fact:
            return []
        before, task.fact = task.fact[0], fact
        shard = f"{task.index}/{task.of}"
        body: dict[str, Any] = {"scheduler": "slurm", "job": task.id, "shard": shard,
                                "state": info.state}
        body.update({"reason": info.reason} if info.reason else {})
        body.update({"node": info.node} if info.node else {})
        body.update({"restarts": info.restarts} if info.restarts else {})
        if info.state in ENDED or info.state == "PREEMPTED":
            body.update(exit_code=info.exit_code, signal=info.signal)
        key = f"{task.run}/slurm/{task.id}/{info.restarts}/{info.state}/{info.reason}/{info.node}"
        events = [wire.envelope(task.run, "scheduler.task", body, key=key[:wire.MAX_KEY])]
        agent_said = info.state == "FAILED" and info.exit_code == AGENT_FAILED_EXIT
        if (info.state in BAD and before not in BAD and not agent_said
                and task.run not in self.cancelled):
            log.warning("run %s: shard %s: %s", task.run, shard, describe(task.id, info))
            events.append(wire.envelope(task.run, "run.failed", {
                "reason": describe(task.id, info), "shard": shard},
                key=f"{task.run}/slurm/{task.id}/{info.restarts}/failed"))
        return events
