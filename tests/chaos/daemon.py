"""`vlmd serve` as the chaos runs it: one log and port, started again after every kill; and the
environment its agents inherit (an isolated VLMD_HOME, and the spool audit hook)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "chaos-token"
AUDIT_HOOK = '''"""Put on the agents' PYTHONPATH by tests/chaos: each outbox spool also records
every key filed into it in chaos_spooled (a trigger: in the same transaction as the filing)."""
import importlib.machinery
import sys

AUDIT = """
CREATE TABLE IF NOT EXISTS chaos_spooled(key TEXT NOT NULL, queued REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS chaos_spool_audit AFTER INSERT ON pending BEGIN
    INSERT INTO chaos_spooled VALUES (new.key, new.queued);
END;
"""


class _AuditFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "vlmd_agent.outbox.spool":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.SCHEMA += AUDIT

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AuditFinder())
'''


def chaos_env(folder: Path) -> dict[str, str]:
    """The environment of vlmd and so of its agents: the write token, VLMD_HOME in `folder`
    (the agents' spools are the chaos's own), and a `sitecustomize` that audits the spools.
    vlmd hands the absolute entries of PYTHONPATH on to the agents it launches."""
    hooks = folder / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "VLMD_TOKEN": TOKEN, "VLMD_HOME": str(folder / "home"),
            "PYTHONPATH": path}




class Daemon:
    """`vlmd serve` on a fixed port over one log, started again and again."""

    def __init__(self, folder: Path, port: int, env: dict[str, str]) -> None:
        self.folder, self.port, self.env = folder, port, env
        self.db = folder / "vlmd.db"
        self.url = f"http://127.0.0.1:{port}"
        self.config = folder / "vlmd.toml"
        self.config.write_text(f'[server]\nport = {port}\n[log]\npath = "{self.db}"\n'
                               "[datasette]\nenabled = false\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        """Start vlmd and wait until it listens.

        Raises:
            RuntimeError: it exited, or did not listen within `timeout` s (its stderr says why).
        """
        self.starts += 1
        logfile = self.folder / f"daemon-{self.starts}.log"
        with logfile.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vlmd", "serve", "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=err, cwd=self.folder, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on " in logfile.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlmd exited {self.proc.returncode}:\n{logfile.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"vlmd did not start in {timeout} s:\n{logfile.read_text()}")

    def running(self) -> bool:
        """Whether the vlmd last started is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """`kill -9` vlmd and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM vlmd; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def submit(self, dataset: Path, model: str, shards: int, name: str) -> str:
        """Submit a run through `POST /api/runs`; its id."""
        r = httpx.post(f"{self.url}/api/runs", headers={"authorization": f"Bearer {TOKEN}"},
                       json={"model": model, "dataset": str(dataset), "shards": shards,
                             "name": name}, timeout=30)
        r.raise_for_status()
        return str(r.json()["run"])

    def state(self, run: str) -> dict[str, Any] | None:
        """The run as `GET /api/runs/RUN` says, or None while vlmd does not answer."""
        try:
            r = httpx.get(f"{self.url}/api/runs/{run}", timeout=5)
            return dict(r.json()) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None
