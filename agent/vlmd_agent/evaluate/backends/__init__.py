"""Model backends: turn a model SPEC into a `Backend` that answers `Request`s.

SPEC forms (DESIGN.md, "Model SPEC"):

- ``openai:NAME@BASE_URL``: any OpenAI-compatible server (vLLM, SGLang, Ollama, TGI, LMDeploy,
  llama.cpp, ``transformers serve``); BASE_URL is ``http(s)://host:port`` with or without ``/v1``.
- ``hf:PATH``: a local transformers model folder, run in this process.
- ``demo:NAME``: a demo model built offline (`vlmd_agent.evaluate.demo_models`), run like ``hf:``;
  ``demo:instant[:MS]`` is no model at all (`.instant`), for exercising the pipeline at speed.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Backend, BackendError, Generation, Request, RequestOptions

__all__ = ["Backend", "BackendError", "Generation", "Request", "RequestOptions",
           "default_models_dir", "load_backend", "split_openai"]

SPEC_FORMS = "openai:NAME@BASE_URL, hf:PATH, demo:NAME"


def default_models_dir() -> Path:
    """Where demo models are built: ``$VLMD_HOME/models`` (``VLMD_HOME``: ``~/.cache/vlmd``)."""
    home = os.environ.get("VLMD_HOME") or str(Path.home() / ".cache" / "vlmd")
    return Path(home).expanduser() / "models"


def load_backend(
    spec: str,
    *,
    max_new_tokens: int = 32,
    device: str = "auto",
    timeout_s: float = 300.0,
    models_dir: Path | None = None,
    options: RequestOptions | None = None,
) -> Backend:
    """Parse ``spec`` and return a ready backend (the model is loaded, demo models built).

    ``max_new_tokens`` caps each request's own budget; ``device`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``) applies to in-process models; ``timeout_s`` bounds one request;
    ``models_dir`` is where ``demo:`` models are built (default `default_models_dir`);
    ``options`` (temperature, system prompt, extra body, API key variable) are for ``openai:``.

    Errors:
        ValueError: the spec is malformed, or options are given for a model that is not served;
            the message names the problem (and the accepted forms).
        FileNotFoundError: an ``hf:`` folder does not exist.
    """
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad model spec {spec!r}: expected one of {SPEC_FORMS}")
    if scheme == "openai":
        from .openai import OpenAIBackend

        name, base_url = split_openai(spec, rest)
        return OpenAIBackend(name, base_url, spec=spec, max_new_tokens=max_new_tokens,
                             timeout_s=timeout_s, options=options)
    if options is not None and not options.is_default():
        raise ValueError(f"{spec}: temperature, system prompt, extra body and API key variable "
                         "apply to openai: models only")
    if scheme == "hf":
        from .hf import HFBackend

        return HFBackend(
            Path(rest).expanduser(),
            spec=spec,
            max_new_tokens=max_new_tokens,
            device=device,
            timeout_s=timeout_s,
        )
    if scheme == "demo" and rest.split(":")[0] == "instant":
        from .instant import parse

        return parse(rest, spec)
    if scheme == "demo":
        from .. import demo_models
        from .hf import HFBackend

        if rest not in demo_models.SPECS:
            known = ", ".join([*demo_models.names(), "instant[:MS]"])
            raise ValueError(
                f"bad model spec {spec!r}: unknown demo model {rest!r} (known: {known}); "
                f"accepted forms: {SPEC_FORMS}"
            )
        folder = demo_models.build(rest, models_dir or default_models_dir())
        import torch

        # Demo models are a few MB: extra CPU threads only add synchronisation, and on a busy
        # machine they make generation many times slower. This process runs one model only.
        torch.set_num_threads(1)
        return HFBackend(
            folder, spec=spec, max_new_tokens=max_new_tokens, device=device, timeout_s=timeout_s
        )
    raise ValueError(
        f"bad model spec {spec!r}: unknown kind {scheme!r}; expected one of {SPEC_FORMS}"
    )


def split_openai(spec: str, rest: str) -> tuple[str, str]:
    """``NAME@BASE_URL`` (`rest`, the part of `spec` after ``openai:``) as (NAME, BASE_URL);
    ValueError naming the spec when it is not one."""
    # NAME may itself hold '@' (a revision), so split at the last '@' that starts the URL.
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at <= 0:
        raise ValueError(
            f"bad model spec {spec!r}: openai needs NAME@BASE_URL with an http(s) URL, "
            f"e.g. openai:Qwen2-VL-2B@http://127.0.0.1:8000/v1; accepted forms: {SPEC_FORMS}"
        )
    return rest[:at], rest[at + 1 :]
