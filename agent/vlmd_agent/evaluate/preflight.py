"""Preflight: check a run's model and dataset before anything runs, so a mistake is one clear
message at submission rather than a run whose every item fails.

`parse_spec` is the one reader of a model SPEC (`load_backend` uses it too). `check_model` asks
what it can without loading a model: an ``openai:`` server must answer ``GET /v1/models`` and,
when it lists models, list this one; an ``hf:`` folder must hold a ``config.json`` that names a
``model_type``; a ``demo:`` name must exist (`parse_spec`). `check_dataset` reads and validates
the whole dataset and returns its item count. A failure is a `PreflightError` whose message
starts with the field (``model:``, ``dataset:``) and says what to fix.

The standard library and httpx only: vlmd's daemon runs these checks at submission, and the
agent's wrapper runs the ``openai:`` one again before its first item.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from vlmd_agent.evaluate import datasets

SPEC_FORMS = "openai:NAME@BASE_URL, hf:PATH, demo:NAME"
TIMEOUT_S = 5.0
MODELS_SHOWN = 10
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MIB = float(1 << 20)


class PreflightError(ValueError):
    """The run cannot work as submitted; the message names the field and what to fix."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model SPEC: its kind and what that kind needs.

    ``openai``: the model ``name`` and the server's ``url`` as given; ``hf``: the folder
    ``path``; ``demo``: the demo model ``name``; ``instant``: ``delay_ms`` per answer.
    """

    spec: str
    kind: Literal["openai", "hf", "demo", "instant"]
    name: str = ""
    url: str = ""
    path: Path | None = None
    delay_ms: float = 2.0

    @property
    def api_root(self) -> str:
        """The OpenAI API root: the URL with ``/v1`` (added when missing)."""
        root = self.url.rstrip("/")
        return root if root.endswith("/v1") else root + "/v1"


def parse_spec(spec: str) -> ModelSpec:
    """Read a model SPEC (`SPEC_FORMS`); ValueError names the problem and the accepted forms."""
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad model spec {spec!r}: expected one of {SPEC_FORMS}")
    if scheme == "openai":
        name, url = split_openai(spec, rest)
        return ModelSpec(spec, "openai", name=name, url=url)
    if scheme == "hf":
        return ModelSpec(spec, "hf", path=Path(rest).expanduser())
    if scheme == "demo" and rest.split(":")[0] == "instant":
        _, _, delay = rest.partition(":")
        try:
            value = float(delay) if delay else 2.0
        except ValueError:
            raise ValueError(f"bad model spec {spec!r}: delay {delay!r} is not a number of ms"
                             ) from None
        if not 0 <= value <= 60_000:
            raise ValueError(f"bad model spec {spec!r}: delay must be 0..60000 ms")
        return ModelSpec(spec, "instant", name="instant", delay_ms=value)
    if scheme == "demo":
        from vlmd_agent.evaluate import demo_models

        if rest not in demo_models.SPECS:
            known = ", ".join([*demo_models.names(), "instant[:MS]"])
            raise ValueError(f"bad model spec {spec!r}: unknown demo model {rest!r} "
                             f"(known: {known}); accepted forms: {SPEC_FORMS}")
        return ModelSpec(spec, "demo", name=rest)
    raise ValueError(f"bad model spec {spec!r}: unknown kind {scheme!r}; "
                     f"expected one of {SPEC_FORMS}")


def split_openai(spec: str, rest: str) -> tuple[str, str]:
    """``NAME@BASE_URL`` (`rest`, the part of `spec` after ``openai:``) as (NAME, BASE_URL);
    ValueError naming the spec when it is not one."""
    # NAME may itself hold '@' (a revision), so split at the last '@' that starts the URL.
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at <= 0:
        raise ValueError(
            f"bad model spec {spec!r}: openai needs NAME@BASE_URL with an http(s) URL, "
            f"e.g. openai:Qwen2-VL-2B@http://127.0.0.1:8000/v1; accepted forms: {SPEC_FORMS}")
    return rest[:at], rest[at + 1:]


def check_model(spec: str, *, timeout_s: float = TIMEOUT_S, api_key_env: str | None = None
                ) -> ModelSpec:
    """Parse `spec` and check that the model can be reached or loaded; see the module docstring.
    A server is asked with the API key in `api_key_env` (default ``OPENAI_API_KEY``), if set.

    Raises PreflightError (``model: ...``) saying what is wrong and what to do.
    """
    try:
        parsed = parse_spec(spec)
    except ValueError as e:
        raise PreflightError(f"model: {e}") from None
    if parsed.kind == "openai":
        _check_server(parsed, timeout_s, os.environ.get(api_key_env or "OPENAI_API_KEY"))
    elif parsed.kind == "hf":
        _check_folder(parsed)
    return parsed


def _check_server(spec: ModelSpec, timeout_s: float, key: str | None) -> None:
    url = f"{spec.api_root}/models"
    try:
        r = httpx.get(url, timeout=timeout_s,
                      headers={"authorization": f"Bearer {key}"} if key else {})
    except httpx.HTTPError as e:
        raise PreflightError(f"model: no OpenAI-compatible server answers at {spec.api_root} "
                             f"({transport_problem(e)}); start it, or fix the URL in "
                             f"{spec.spec!r}") from None
    if r.status_code in (401, 403):
        raise PreflightError(f"model: {url} refused vlmd (HTTP {r.status_code}): set the API "
                             "key where vlmd runs (OPENAI_API_KEY, or the variable "
                             "--api-key-env names), or pass --no-preflight")
    if r.status_code == 404:
        raise PreflightError(f"model: {url} is not found (HTTP 404): is {spec.url} an "
                             "OpenAI-compatible server? If it serves /v1/chat/completions "
                             "without /v1/models, pass --no-preflight")
    if r.status_code >= 400:
        raise PreflightError(f"model: {url} answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        listed = r.json()["data"]
        served = [str(m["id"]) for m in listed]
    except (ValueError, KeyError, TypeError):
        raise PreflightError(f"model: {url} did not answer an OpenAI model list; pass "
                             "--no-preflight if the server has none") from None
    # an empty list says nothing: `transformers serve` without a pinned model lists none and
    # loads whatever folder a request names
    if served and spec.name not in served:
        shown = ", ".join(repr(m) for m in served[:MODELS_SHOWN])
        more = f" and {len(served) - MODELS_SHOWN} more" if len(served) > MODELS_SHOWN else ""
        raise PreflightError(f"model: {spec.api_root} does not serve {spec.name!r}; it serves "
                             f"{shown}{more}: use --model openai:{served[0]}@{spec.url}")


def transport_problem(e: httpx.HTTPError) -> str:
    """A connection failure in a few words: ``connection refused``, ``timed out``, ..."""
    text = str(e) or type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if "refused" in text.lower():
        return "connection refused"
    if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
        return "unknown host"
    return text


def _check_folder(spec: ModelSpec) -> None:
    folder = spec.path
    assert folder is not None
    if not folder.is_dir():
        raise PreflightError(f"model: no model folder {str(folder)!r} on this host")
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        raise PreflightError(f"model: {str(folder)!r} holds no config.json: expected a "
                             "transformers model folder (config.json, weights, processor)"
                             ) from None
    except (OSError, ValueError) as e:
        raise PreflightError(f"model: {config}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise PreflightError(f"model: {config} names no model_type: not a transformers model "
                             "config")


def model_size_mb(folder: Path) -> float | None:
    """The size of the weight files in a model folder, in MiB (None when it holds none)."""
    try:
        sizes = [p.stat().st_size for p in folder.iterdir()
                 if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    except OSError:
        return None
    return sum(sizes) / MIB if sizes else None


def check_dataset(path: str, limit: int | None = None, columns: str | None = None) -> int:
    """Read and validate the whole dataset (`columns` as ``--columns`` gives them); the number
    of items a run of it evaluates (at most `limit`). Raises PreflightError
    (``dataset: FILE:LINE: field: why``)."""
    try:
        n = len(datasets.load(path, columns=datasets.parse_columns(columns)))
    except datasets.DatasetError as e:
        raise PreflightError(f"dataset: {e}") from None
    except OSError as e:  # no permission, an I/O error
        raise PreflightError(f"dataset: {path}: cannot read it ({e.strerror or e})") from None
    return n if limit is None else min(n, limit)
