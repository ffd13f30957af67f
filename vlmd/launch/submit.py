"""Run submission: check a `POST /api/runs` body and turn it into events and a `LaunchSpec`.

`parse` checks the body's fields; `preflight` then checks that the run can work at all (the
model answers or loads, the dataset is valid) before any agent starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from vlmd.launch.launcher import EVALUATION_OPTIONS, SERVING, LaunchSpec
from vlmd_agent import wire
from vlmd_agent.evaluate import datasets
from vlmd_agent.evaluate import preflight as pre

MODEL_RE = re.compile(r"(openai:[^@\s]+@https?://\S+|hf:\S+|demo:[A-Za-z0-9_.:-]+)")
JUDGE_RE = re.compile(r"openai:[^@\s]+@https?://\S+")
LIMITS = {"shards": (1, 256), "limit": (1, 10_000_000), "max_new_tokens": (1, 32_768),
          "concurrency": (1, 1024), "fail_after": (0, 10_000_000)}
FIELDS = {"model", "dataset", "name", "shards", "limit", "max_new_tokens", "device", "on_hang",
          "preflight", "fail_after", "max_failed", *SERVING, *EVALUATION_OPTIONS}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_TEXT = 65_536
MAX_OPTION = 4096
# what only a served model's requests carry (concurrency and rate work with any model)
SERVED_ONLY = ("temperature", "system_prompt", "extra_body", "api_key_env")


class SubmitError(ValueError):
    """A submission vlmd refuses; the message names the field."""


def parse(body: Any) -> LaunchSpec:
    """Check a submission (``model``, ``dataset``, optional ``name``, ``shards``, ``limit``,
    ``max_new_tokens``, ``device``, ``on_hang``, the serving options: ``concurrency`` and
    those of `serving_options`, and the evaluation options: ``prompt_template``, ``columns``,
    ``judge``) and build its spec with a new run id.

    The dataset must be on this host (the local launcher's agents read it): a file, a folder of
    parquet or arrow files, or a glob of them; its path is made absolute. Raises SubmitError
    naming the first bad field.
    """
    if not isinstance(body, dict):
        raise SubmitError("body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise SubmitError(f"{unknown[0]}: unknown field (known: {', '.join(sorted(FIELDS))})")
    model = body.get("model")
    if not isinstance(model, str) or not MODEL_RE.fullmatch(model):
        raise SubmitError("model: expected openai:NAME@BASE_URL, hf:PATH or demo:NAME")
    if model.startswith("hf:") and not Path(model[3:]).is_absolute() and Path(model[3:]).exists():
        # the agents run in vlmd's own folder: a path relative to here is made absolute
        model = "hf:" + str(Path(model[3:]).resolve())
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset or "\0" in dataset:
        raise SubmitError("dataset: expected the path of a dataset file or folder")
    path = Path(dataset).expanduser().resolve()
    try:
        files = datasets.source_files(path)
    except datasets.DatasetError as e:
        raise SubmitError(f"dataset: no dataset at {dataset!r} on the vlmd host: "
                          f"{e.problem}") from None
    if not all(f.is_file() for f in files):
        raise SubmitError(f"dataset: no dataset at {dataset!r} on the vlmd host: no such file")
    evaluation = evaluation_options(body)
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
    found = serving_options(body, model)
    if "concurrency" in numbers:
        found["concurrency"] = numbers["concurrency"]
    serving = {key: found[key] for key in SERVING if key in found}
    check = body.get("preflight", True)
    if type(check) is not bool:
        raise SubmitError("preflight: expected true or false")
    max_failed = body.get("max_failed")
    if max_failed is not None and (type(max_failed) not in (int, float)
                                   or not 0 < max_failed <= 1):
        raise SubmitError("max_failed: expected a fraction above 0, at most 1")
    return LaunchSpec(run=wire.new_run_id(), model=model, dataset=str(path),
                      shards=numbers.get("shards", 1), limit=numbers.get("limit"),
                      max_new_tokens=numbers.get("max_new_tokens", 32), device=device,
                      on_hang=on_hang, options={"name": name} if name else {},
                      serving=serving, **evaluation, preflight=check,
                      fail_after=numbers.get("fail_after"),
                      max_failed=None if max_failed is None else float(max_failed))


def resubmission(run: str, body: Any) -> LaunchSpec:
    """The spec of `run` as its ``run.submitted`` `body` records it, checked exactly as `parse`
    checks a new submission (anyone who could write the log could have written that body).
    Raises SubmitError naming the first bad field."""
    if not isinstance(body, dict) or not isinstance(body.get("config") or {}, dict):
        raise SubmitError("config: expected an object")
    cfg = body.get("config") or {}
    fields = {"model": body.get("model"), "dataset": body.get("dataset"),
              "name": body.get("name"), "shards": body.get("shards"), "limit": cfg.get("limit"),
              "max_new_tokens": cfg.get("max_new_tokens"), "device": cfg.get("device"),
              "on_hang": cfg.get("on_hang"), **{k: cfg.get(k) for k in SERVING},
              **{k: cfg.get(k) for k in EVALUATION_OPTIONS}}
    return replace(parse({k: v for k, v in fields.items() if v is not None}), run=run)


def serving_options(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The set serving options of a submission but ``concurrency`` (checked with the other
    integers): ``rate`` (requests per second), ``temperature`` (0 to 2), ``system_prompt``,
    ``extra_body`` (an object), ``api_key_env`` (a variable's name, never a key),
    ``server_metrics`` (auto, off or an http(s) URL). Raises SubmitError naming the field."""
    found: dict[str, Any] = {}
    rate = body.get("rate")
    if rate is not None:
        if type(rate) not in (int, float) or not 0 < rate <= 1e6:
            raise SubmitError("rate: expected requests per second, a number above 0")
        found["rate"] = float(rate)
    temperature = body.get("temperature")
    if temperature is not None:
        if type(temperature) not in (int, float) or not 0 <= temperature <= 2:
            raise SubmitError("temperature: expected a number from 0 to 2")
        found["temperature"] = float(temperature)
    prompt = body.get("system_prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or len(prompt) > MAX_TEXT:
            raise SubmitError(f"system_prompt: expected text (at most {MAX_TEXT} characters)")
        found["system_prompt"] = prompt
    extra = body.get("extra_body")
    if extra is not None:
        if not isinstance(extra, dict) or len(json.dumps(extra)) > MAX_TEXT:
            raise SubmitError("extra_body: expected a JSON object (at most 64 KiB), merged into "
                              "every request body")
        found["extra_body"] = extra
    env = body.get("api_key_env")
    if env is not None:
        if not isinstance(env, str) or not ENV_NAME.fullmatch(env):
            raise SubmitError("api_key_env: expected the name of an environment variable "
                              "(letters, digits, '_'), not a key")
        found["api_key_env"] = env
    metrics = body.get("server_metrics")
    if metrics is not None:
        if not isinstance(metrics, str) or not (
                metrics in ("auto", "off") or re.fullmatch(r"https?://\S+", metrics)):
            raise SubmitError("server_metrics: expected auto, off or an http(s) URL")
        found["server_metrics"] = metrics
    if not model.startswith("openai:"):
        for key in SERVED_ONLY:
            if key in found and not (key == "temperature" and found[key] == 0):
                raise SubmitError(f"{key}: applies to served models (openai:) only")
    return found


def evaluation_options(body: dict[str, Any]) -> dict[str, str]:
    """The submission's `EVALUATION_OPTIONS` that are set, each checked as the agent would;
    SubmitError naming the first bad one."""
    checks = {"prompt_template": datasets.check_template, "columns": datasets.parse_columns,
              "judge": _judge}
    found: dict[str, str] = {}
    for name in EVALUATION_OPTIONS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > MAX_OPTION:
            raise SubmitError(f"{name}: expected text of 1 to {MAX_OPTION} characters")
        try:
            checks[name](value)
        except ValueError as e:
            raise SubmitError(f"{name}: {e}") from None
        found[name] = value
    return found


def _judge(spec: str) -> None:
    if not JUDGE_RE.fullmatch(spec):
        raise ValueError(f"bad judge {spec!r}: expected openai:NAME@BASE_URL (any "
                         "OpenAI-compatible server)")


class Checked(NamedTuple):
    """What `preflight` found: the run's item count and its dataset's `content_hash`."""

    total: int
    dataset_sha256: str


def preflight(spec: LaunchSpec) -> Checked:
    """Check that `spec` can work before any agent starts (blocking: run it in a thread): the
    model SPEC reads well (a ``demo:`` name exists), the model answers or loads
    (`vlmd_agent.evaluate.preflight.check_model`; a submission with ``preflight`` off skips
    this, for servers without ``/v1/models`` or folders only the agents' hosts have) and the
    dataset is valid. Returns the run's item count and the dataset's content hash (what
    comparisons of runs go by: `vlmd.projections.compare`).

    Raises SubmitError saying what to fix.
    """
    try:
        if spec.preflight:
            pre.check_model(spec.model, api_key_env=spec.serving.get("api_key_env"))
        else:
            pre.parse_spec(spec.model)
        total = pre.check_dataset(spec.dataset, spec.limit, spec.columns)
        return Checked(total, dataset_hash(spec.dataset))
    except pre.PreflightError as e:
        raise SubmitError(str(e)) from None
    except ValueError as e:  # parse_spec's
        raise SubmitError(f"model: {e}") from None


def dataset_hash(path: str) -> str:
    """The dataset's `datasets.content_hash` (blocking); SubmitError when it cannot be read."""
    try:
        return datasets.content_hash(path)
    except datasets.DatasetError as e:
        raise SubmitError(f"dataset: {e}") from None
    except OSError as e:
        raise SubmitError(f"dataset: {path}: cannot read it ({e.strerror or e})") from None


def check_unchanged(dataset: str, recorded: str | None) -> None:
    """Before a run is resumed (blocking): its dataset still has the content hash its
    submission `recorded` (if it recorded one), so the run's items all come from one dataset.
    Raises SubmitError saying what changed."""
    if recorded is None:
        return
    now = dataset_hash(dataset)
    if now != recorded:
        raise SubmitError(f"dataset: {dataset} changed since the run was submitted (sha256 "
                          f"{recorded[:12]}..., now {now[:12]}...): resuming would mix two "
                          "datasets' answers; submit a new run")


def submitted_event(spec: LaunchSpec, checked: Checked | None = None) -> dict[str, Any]:
    """The ``run.submitted`` envelope that records the submission in the log (with the item
    count and the dataset's content hash when `preflight` found them)."""
    body: dict[str, Any] = {
        "model": spec.model, "dataset": spec.dataset, "shards": spec.shards,
        "config": {"limit": spec.limit, "max_new_tokens": spec.max_new_tokens,
                   "device": spec.device, "on_hang": spec.on_hang, "launcher": "local",
                   "preflight": spec.preflight, "fail_after": spec.fail_after,
                   "max_failed": spec.max_failed, **spec.serving,
                   **{k: v for k in EVALUATION_OPTIONS if (v := getattr(spec, k)) is not None}}}
    if spec.options.get("name"):
        body["name"] = spec.options["name"]
    if checked is not None:
        body["total"], body["dataset_sha256"] = checked
    return wire.envelope(spec.run, "run.submitted", body, key=f"{spec.run}/submitted")
