"""Run submission: check a `POST /api/runs` body and turn it into events and a `LaunchSpec`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlmd.launch.launcher import LaunchSpec
from vlmd_agent import wire

MODEL_RE = re.compile(r"(openai:[^@\s]+@https?://\S+|hf:\S+|demo:[A-Za-z0-9_.:-]+)")
LIMITS = {"shards": (1, 256), "limit": (1, 10_000_000), "max_new_tokens": (1, 32_768)}
FIELDS = {"model", "dataset", "name", "shards", "limit", "max_new_tokens", "device", "on_hang"}


class SubmitError(ValueError):
    """A submission vlmd refuses; the message names the field."""


def parse(body: Any) -> LaunchSpec:
    """Check a submission (``model``, ``dataset``, optional ``name``, ``shards``, ``limit``,
    ``max_new_tokens``, ``device``, ``on_hang``) and build its spec with a new run id.

    The dataset must be a file on this host (the local launcher's agents read it); its path is
    made absolute. Raises SubmitError naming the first bad field.
    """
    if not isinstance(body, dict):
        raise SubmitError("body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise SubmitError(f"{unknown[0]}: unknown field (known: {', '.join(sorted(FIELDS))})")
    model = body.get("model")
    if not isinstance(model, str) or not MODEL_RE.fullmatch(model):
        raise SubmitError("model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME")
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset or "\0" in dataset:
        raise SubmitError("dataset: expected the path of a JSONL or TSV file")
    path = Path(dataset).expanduser().resolve()
    if not path.is_file():
        raise SubmitError(f"dataset: no such file {dataset!r} on the vlmd host")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not wire.RUN_RE.fullmatch(name)):
        raise SubmitError("name: letters, digits, '.', '_', '-', ':' (at most 128), "
                          "starting with a letter or digit")
    numbers: dict[str, int] = {}
    for key, (low, high) in LIMITS.items():
        value = body.get(key)
        if value is None:
            continue
        if type(value) is not int or not low <= value <= high:
            raise SubmitError(f"{key}: expected an integer from {low} to {high}")
        numbers[key] = value
    device = body.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise SubmitError("device: expected auto, cpu, cuda or cuda:N")
    on_hang = body.get("on_hang", "report")
    if on_hang not in ("report", "restart"):
        raise SubmitError("on_hang: expected report or restart")
    return LaunchSpec(run=wire.new_run_id(), model=model, dataset=str(path),
                      shards=numbers.get("shards", 1), limit=numbers.get("limit"),
                      max_new_tokens=numbers.get("max_new_tokens", 32), device=device,
                      on_hang=on_hang, options={"name": name} if name else {})


def submitted_event(spec: LaunchSpec) -> dict[str, Any]:
    """The ``run.submitted`` envelope that records the submission in the log."""
    body: dict[str, Any] = {
        "model": spec.model, "dataset": spec.dataset, "shards": spec.shards,
        "config": {"limit": spec.limit, "max_new_tokens": spec.max_new_tokens,
                   "device": spec.device, "on_hang": spec.on_hang, "launcher": "local"}}
    if spec.options.get("name"):
        body["name"] = spec.options["name"]
    return wire.envelope(spec.run, "run.submitted", body, key=f"{spec.run}/submitted")
