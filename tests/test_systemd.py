"""scripts/vlmd.service passes `systemd-analyze verify`, asks for what the daemon provides, and
does what docs/RELIABILITY.md says about the agents when vlmd stops."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "scripts" / "vlmd.service"
EXEC = "ExecStart=/usr/local/bin/vlmd serve --config /etc/vlmd/vlmd.toml"


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed, so the unit cannot be verified: "
                    "apt-get install -y systemd")
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)


def installed_copy(tmp_path: Path, text: str, name: str = "vlmd.service") -> Path:
    """The unit as installed: its absolute ExecStart points at this checkout's vlmd (verify
    insists the binary exists; /usr/local/bin/vlmd is where the README installs it)."""
    vlmd = Path(sys.executable).parent / "vlmd"
    assert vlmd.is_file(), f"{vlmd}: install the project first (scripts/test does)"
    path = tmp_path / name
    path.write_text(text.replace(EXEC, EXEC.replace("/usr/local/bin/vlmd", str(vlmd))))
    return path


def test_the_unit_verifies_without_a_single_diagnostic(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(EXEC) == 1
    done = verify(installed_copy(tmp_path, text))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_a_broken_unit_is_reported(tmp_path: Path) -> None:
    broken = installed_copy(tmp_path, UNIT.read_text().replace("Type=notify", "Type=notifyy"),
                            "broken.service")
    done = verify(broken)
    assert "Failed to parse service type" in done.stdout + done.stderr


def test_the_unit_asks_for_notify_watchdog_restarts_state_and_the_gpu() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    assert {"Type=notify", EXEC, "Restart=on-failure", "StateDirectory=vlmd",
            "DeviceAllow=/dev/nvidiactl rw", "DeviceAllow=char-nvidia-frontend rw",
            "DeviceAllow=/dev/nvidia-uvm rw", "PrivateDevices=no"} <= lines
    watchdog = [line for line in lines if line.startswith("WatchdogSec=")]
    assert len(watchdog) == 1 and int(watchdog[0].split("=")[1]) > 0
    assert "PrivateDevices=yes" not in lines


def test_the_unit_lets_agents_outlive_vlmd_as_reliability_md_says() -> None:
    """Agents outlive vlmd (their spools deliver to the next one): systemd must signal vlmd's
    own process only when it stops, restarts or replaces it; mixed or control-group would
    SIGKILL the agents in vlmd's cgroup at every restart."""
    kill_modes = [line.strip() for line in UNIT.read_text().splitlines()
                  if line.strip().startswith("KillMode=")]
    assert kill_modes == ["KillMode=process"]
    reliability = (UNIT.parent.parent / "docs" / "RELIABILITY.md").read_text()
    section = reliability.split("### Under systemd", 1)[1].split("\n#", 1)[0]
    assert "Agents outlive vlmd" in section and "`KillMode=process`" in section
    assert "KillMode=mixed" not in UNIT.read_text()
