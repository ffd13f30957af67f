"""Comparing runs from a terminal: ``vlmd report`` (accuracy against cost, per dataset, with the
Pareto front) and ``vlmd diff`` (the items that changed between two runs).

Both print what the projections decide (`vlmd.projections.compare`, `vlmd.projections.diff`):
from the daemon's rows when one answers, else from the log file (`vlmd.cli.offline`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from vlmd.cli import offline
from vlmd.cli.base import CliError, command, one_line
from vlmd.config import Config
from vlmd.projections import compare

# (header, cost name; None: the KV-cache peak, not a cost)
Column = tuple[str, str | None]
COLUMNS: tuple[Column, ...] = (
    ("TTFT_P50_MS", "ttft_p50"), ("TTFT_P99_MS", "ttft_p99"), ("TPOT_P50_MS", "tpot_p50"),
    ("VRAM_D_P50_MB", "vram_p50"), ("VRAM_D_MAX_MB", "vram_max"), ("ITEMS_S", "items_per_s"),
    ("J_PER_CORRECT", "joules_per_correct"), ("KV_PEAK", None))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cell(run: dict[str, Any], cost: str | None) -> str:
    if cost is None:
        return _num(run["kv_cache_peak"], ".0%")
    if cost == "joules_per_correct" and run["energy_source"] == "na":
        return "na"  # a GPU without an energy counter; "-": nothing measured
    return _num(run["costs"][cost], ".2f" if cost == "items_per_s" else ".1f")


def _group_head(group: dict[str, Any]) -> str:
    sha = group["dataset_sha256"]
    paths = ", ".join(group["paths"]) or "(no dataset named)"
    items = "?" if group["total"] is None else group["total"]
    return (f"dataset {paths}  " + (f"sha256 {sha[:12]}" if sha else "content not recorded")
            + f"  {items} items")


def report_table(rows: Sequence[dict[str, Any]], cost: str = compare.DEFAULT_COST,
                 dataset: str | None = None) -> str:
    """The comparison of runs (as ``GET /api/runs/{run}`` returns them), one table per dataset
    (`vlmd.projections.compare`; only `dataset`'s, a path or a hash prefix, when given).

    A ``*`` marks the runs on their dataset's Pareto front of accuracy against `cost`; a ``-``
    the runs that cannot be on it (running, cancelled, failed, or not every item answered).
    """
    found = compare.compare(rows, cost)
    groups = [g for g in found["groups"] if dataset is None or compare.matches(g, dataset)]
    if not groups:
        raise CliError(f"no run evaluated the dataset {dataset!r} (a path, or 4+ hex digits of "
                       "its sha256)")
    columns = COLUMNS if any(c == cost for _, c in COLUMNS) else (
        *COLUMNS, (f"{cost.upper()}", cost))
    head = ["RUN", "MODEL", "STATUS", "DONE", "FAILED", "ACCURACY", *(h for h, _ in columns)]
    out = []
    for group in groups:
        table = [head]
        for run in group["runs"]:
            mark = "*" if run["front"] else "-" if run["excluded"] else " "
            table.append([mark + (run["name"] or run["run"]), run["model"] or "-",
                          (run["outcome"] or run["status"]).replace("_", " "),
                          f"{run['done']}/{run['total'] or '?'}", str(run["failed"]),
                          _num(run["accuracy"], ".3f"), *(_cell(run, c) for _, c in columns)])
        widths = [max(len(str(x)) for x in col) for col in zip(*table, strict=True)]
        out.append(_group_head(group))
        out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                for line in table]
        out.append("")
    if all(len(g["runs"]) == 1 for g in groups):
        return "\n".join(out).rstrip()  # one run per dataset: nothing to compare
    label = found["cost"]["label"]
    return "\n".join(out) + (f"(* on its dataset's accuracy / {label} Pareto front; - never on "
                             "it: running, cancelled, failed or not every item answered)")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or names (default: all)")
    p.add_argument("--cost", default=compare.DEFAULT_COST, choices=list(compare.COSTS),
                   help=f"the Pareto front's cost axis (default {compare.DEFAULT_COST})")
    p.add_argument("--dataset", metavar="PATH|SHA256",
                   help="only the runs of this dataset (its path, or 4+ hex digits of its hash)")
    p.add_argument("--db", metavar="FILE",
                   help="read this log file (default: ask the daemon, else read log.path)")


@command("report", _report_args)
def cmd_report(args: argparse.Namespace, config: Config) -> int:
    """Compare runs by accuracy and cost (TTFT, TPOT, latency percentiles, peak VRAM delta,
    items/s, joules per correct answer), one table per dataset, with each dataset's Pareto
    front. Without a running daemon it reads the log file.

    Example:
        vlmd report nightly-7b nightly-13b --cost joules_per_correct
    """
    states = offline.states(config, args.runs, args.db)
    if not states:
        raise CliError("no runs yet; start one with `vlmd run` or `vlmd demo`")
    print(report_table(states, args.cost, args.dataset))
    return 0


def _score(side: dict[str, Any] | None) -> str:
    if side is None:
        return "not run"
    if side["error"] is not None:
        return "failed"
    return "unscored" if side["score"] is None else f"{side['score']:g}"


def _answer(side: dict[str, Any] | None) -> str:
    if side is None:
        return "(not run)"
    if side["error"] is not None:
        return f"(failed: {one_line(side['error'])})"
    return one_line(str(side["answer"]))


def _ref(which: str, ref: dict[str, Any]) -> str:
    acc = "-" if ref["accuracy"] is None else f"{ref['accuracy']:.3f}"
    return (f"{which}: {ref['run']}" + (f" ({ref['name']})" if ref["name"] else "")
            + f"  {ref['model'] or '-'}  {ref['done']}/{ref['total'] or '?'} answered, "
            f"accuracy {acc}")


def diff_text(found: dict[str, Any]) -> str:
    """`vlmd diff`'s output for a diff (as `vlmd.projections.diff.diff` returns it)."""
    a, b, counts = found["a"], found["b"], found["counts"]
    sha = a["dataset_sha256"]
    lines = [_ref("A", a), _ref("B", b),
             f"dataset {a['dataset']}  " + (f"sha256 {sha[:12]}" if sha else
                                            "content not recorded")
             + ("" if found["same_dataset"] else f"; B's: {b['dataset']} (not the same)"),
             f"{counts['compared']} items compared, {counts['changed']} changed: "
             f"{counts['up']} up, {counts['down']} down, {counts['only_a']} answered by A only, "
             f"{counts['only_b']} by B only, {counts['unscored']} unscored"]
    for item in found["items"]:
        expected = item["expected"]
        if isinstance(expected, list):
            expected = " | ".join(expected)
        lines += ["", f"item {one_line(item['item'])}  {item['change']}  "
                      f"{_score(item['a'])} -> {_score(item['b'])}",
                  f"  question: {one_line(str(item['question'] or '-'))}",
                  *(f"    {letter}. {one_line(text)}"
                    for letter, text in (item["options"] or {}).items()),
                  f"  expected: {one_line(str(expected or '-'))}",
                  f"  A: {_answer(item['a'])}", f"  B: {_answer(item['b'])}"]
    if found["truncated"]:
        lines += ["", f"({len(found['items'])} of {counts['changed']} changed items shown)"]
    return "\n".join(lines)


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="RUN_A", help="run id or name")
    p.add_argument("b", metavar="RUN_B", help="run id or name")
    p.add_argument("--force", action="store_true",
                   help="compare runs of different datasets (an item id may then be another "
                        "question)")
    p.add_argument("--limit", type=int, metavar="N", help="list at most N items (counts are "
                                                          "of all)")
    p.add_argument("--json", action="store_true", help="print the diff as GET /api/diff does")
    p.add_argument("--db", metavar="FILE",
                   help="read this log file (default: ask the daemon, else read log.path)")


@command("diff", _diff_args)
def cmd_diff(args: argparse.Namespace, config: Config) -> int:
    """List the items whose score changed from run A to run B, or that one of them answered
    and the other did not, each with its question, both answers and both scores. Runs of
    different datasets are refused unless --force. Without a running daemon it reads the log
    file.

    Example:
        vlmd diff nightly-7b nightly-13b --limit 20
    """
    if args.limit is not None and args.limit < 0:
        raise CliError("--limit must be 0 or more")
    found = offline.diff(config, args.a, args.b, force=args.force, limit=args.limit,
                         db=args.db)
    print(json.dumps(found, indent=1) if args.json else diff_text(found))
    return 0
