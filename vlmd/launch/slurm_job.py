"""Slurm's side of a run: the batch script vlmd submits, the commands, what Slurm answers.

Pure functions over text and files plus `slurm`, the one place Slurm commands are run; the
launcher that uses them is `vlmd.launch.slurm`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from vlmd.config import Config
from vlmd.launch.launcher import LaunchError, LaunchSpec

CMD_TIMEOUT_S = 30.0
ENDED = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED",
                   "BOOT_FAIL", "DEADLINE", "VANISHED"})
"""Final task states (VANISHED is vlmd's: Slurm forgot the job before vlmd saw it end)."""
BAD = (ENDED - {"COMPLETED"}) | {"PREEMPTED"}  # PREEMPTED is not final: it may be requeued
AGENT_FAILED_EXIT = 1  # vlmd-agent's "shard failed": it has sent run.failed with the reason
SETUP_FAILED_EXIT = 97
ENV_FILE = "job.env"
SCRIPT_FILE = "job.sh"
_FIELD = re.compile(r"(\S+?)=(\S*)")


class SlurmError(LaunchError):
    """A Slurm command failed; the message names the command and says what Slurm answered."""


async def slurm(*args: str, timeout: float = CMD_TIMEOUT_S) -> str:
    """Run a Slurm command; its stdout. Raises SlurmError ("sbatch failed: ...")."""
    try:
        with trio.fail_after(timeout):
            done = await trio.run_process(list(args), capture_stdout=True, capture_stderr=True,
                                          check=False, stdin=b"")
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} failed: command not found (is Slurm installed and on "
                         "vlmd's PATH?)") from None
    except trio.TooSlowError:
        raise SlurmError(f"{args[0]} failed: no answer in {timeout:g} s (is slurmctld up?)"
                         ) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise SlurmError(f"{args[0]} failed (exit status {done.returncode}): "
                         f"{said or 'no message'}")
    return bytes(done.stdout).decode(errors="replace")


@dataclass(frozen=True)
class TaskInfo:
    """One record of ``scontrol show job -o``: an array task, or a range of pending ones."""

    job: str
    indices: tuple[int, ...]
    state: str
    reason: str
    node: str
    exit_code: int
    signal: int
    restarts: int


def array_indices(text: str) -> tuple[int, ...]:
    """The task ids of an ``ArrayTaskId`` such as ``3``, ``0-3``, ``1,4-6`` or ``0-9:2%4``."""
    found: list[int] = []
    for part in text.split("%")[0].split(","):
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        found.extend(range(int(low), int(high or low) + 1, int(step or 1)))
    return tuple(found)


def parse_jobs(text: str) -> list[TaskInfo]:
    """Parse ``scontrol show job -o`` output (one record a line) into task records."""
    records = []
    for line in text.splitlines():
        f = dict(_FIELD.findall(line))  # values with spaces are cut short; none is read here
        if "JobState" not in f:
            continue
        code, _, sig = f.get("ExitCode", "0:0").partition(":")
        node = "" if f.get("NodeList", "") in ("", "(null)") else f["NodeList"]
        records.append(TaskInfo(
            job=f.get("ArrayJobId") or f["JobId"], indices=array_indices(f.get("ArrayTaskId", "0")),
            state=f["JobState"], reason="" if f.get("Reason") == "None" else f.get("Reason", ""),
            node=node, exit_code=int(code or 0), signal=int(sig or 0),
            restarts=int(f.get("Restarts", "0") or 0)))
    return records


def array_spec(shards: Iterable[int]) -> str:
    """``--array`` text for task ids: ``0-3`` for a full range, else a list ``1,3``."""
    ids = sorted(set(shards))
    if ids and ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1:
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def sbatch_options(config: Config) -> list[str]:
    """The ``#SBATCH`` options the ``[launcher]`` section asks for."""
    c = config.launcher
    opts = [f"--partition={c.partition}"] if c.partition else []
    opts += [f"--account={c.account}"] if c.account else []
    opts += [f"--time={c.time_limit}"] if c.time_limit else []
    opts += [f"--gres=gpu:{c.gpus_per_shard}"] if c.gpus_per_shard else []
    return opts + [o.removeprefix("#SBATCH").strip() for o in c.extra_sbatch]


def job_script(spec: LaunchSpec, url: str, config: Config, folder: Path) -> str:
    """The batch script of a run: task ``$SLURM_ARRAY_TASK_ID`` runs that shard's agent."""
    c = config.launcher
    agent = c.agent or f"{shlex.quote(sys.executable)} -P -m vlmd_agent"
    args = " ".join(map(shlex.quote, replace(spec, shards=1).agent_args(url, 0, config)))
    shard = f' --shard "$SLURM_ARRAY_TASK_ID/{spec.shards}"' if spec.shards > 1 else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=vlmd-{spec.run}",
             *(f"#SBATCH {o}" for o in sbatch_options(config)),
             f"# vlmd run {spec.run}: array task i runs shard i/{spec.shards}. Written by vlmd;",
             "# resubmit failed shards with `vlmd resume RUN`, not by hand.",
             f"set -a; . {shlex.quote(str(folder / ENV_FILE))}; set +a",
             "export PYTHONSAFEPATH=1  # no Python of the job puts its working folder first"]
    if c.setup:
        lines += ["{", c.setup, f"}} || {{ echo 'vlmd job: the set-up command failed' >&2; "
                                f"exit {SETUP_FAILED_EXIT}; }}"]
    return "\n".join([*lines, f"exec {agent} {args}{shard}", ""])


def write_job(spec: LaunchSpec, url: str, token: str, config: Config, folder: Path) -> Path:
    """Write the run's token file (mode 0600) and job script into `folder`; the script's path."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    fd = os.open(folder / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# vlmd run {spec.run}: the token its agents send (read by {SCRIPT_FILE})\n"
                f"VLMD_TOKEN={shlex.quote(token)}\n")
    script = folder / SCRIPT_FILE
    script.write_text(job_script(spec, url, config, folder))
    return script


def describe(task_id: str, info: TaskInfo) -> str:
    """Slurm's account of a task that ended badly, as a run.failed reason."""
    where = f" on {info.node}" if info.node else ""
    how = [f"exit code {info.exit_code}"] if info.exit_code else []
    how += [f"signal {info.signal}"] if info.signal else []
    how += [f"reason {info.reason}"] if info.reason else []
    return f"slurm: task {task_id} {info.state}{where}" + (f" ({', '.join(how)})" if how else "")
