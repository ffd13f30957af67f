"""Shared by the `scripts/bench_*` benchmarks: `vlmd serve` as a subprocess over a fresh log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def start_daemon(folder: Path, token: str, *, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `vlmd serve` on a free port over ``folder/vlmd.db`` (Datasette off, `token` for
    writes) and return the process and its URL once it says where it listens."""
    config = folder / "vlmd.toml"
    config.write_text('[server]\nport = 0\n[datasette]\nenabled = false\n'
                      f'[log]\npath = "{folder / "vlmd.db"}"\n')
    log = folder / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vlmd", "serve", "--config", str(config)],
                                stderr=err, stdout=subprocess.DEVNULL, cwd=folder,
                                env={**os.environ, "VLMD_TOKEN": token, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            return proc, text.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"vlmd serve did not start:\n{log.read_text()}")
