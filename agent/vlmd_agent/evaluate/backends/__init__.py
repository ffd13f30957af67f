"""Model backends: turn a model SPEC into a `Backend` that answers `Request`s.

SPEC forms (DESIGN.md, "Model SPEC"; read by `vlmd_agent.evaluate.preflight.parse_spec`):

- ``openai:NAME@BASE_URL``: any OpenAI-compatible server (vLLM, SGLang, Ollama, TGI, LMDeploy,
  llama.cpp, ``transformers serve``); BASE_URL is ``http(s)://host:port`` with or without ``/v1``.
- ``hf:PATH``: a local transformers model folder, run in this process.
- ``demo:NAME``: a demo model built offline (`vlmd_agent.evaluate.demo_models`), run like ``hf:``;
  ``demo:instant[:MS]`` is no model at all (`.instant`), for exercising the pipeline at speed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..preflight import parse_spec, split_openai
from .base import Backend, BackendError, Generation, Request, RequestOptions

__all__ = ["Backend", "BackendError", "Generation", "Progress", "Request", "RequestOptions",
           "default_models_dir", "load_backend", "split_openai"]

Progress = Callable[[int, int], None]
"""Told ``(step, steps)`` as a long preparation (a demo model's training) goes on."""


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
    progress: Progress | None = None,
) -> Backend:
    """Parse ``spec`` and return a ready backend (the model is loaded, demo models built).

    ``max_new_tokens`` caps each request's own budget; ``device`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``) applies to in-process models; ``timeout_s`` bounds one request;
    ``models_dir`` is where ``demo:`` models are built (default `default_models_dir`);
    ``options`` (temperature, system prompt, extra body, API key variable) are for ``openai:``;
    ``progress(step, steps)`` hears of each training step while a demo model is built.

    Errors:
        ValueError: the spec is malformed, or options are given for a model that is not served;
            the message names the problem (and the accepted forms).
        FileNotFoundError: an ``hf:`` folder does not exist.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(parsed.name, parsed.url, spec=spec, max_new_tokens=max_new_tokens,
                             timeout_s=timeout_s, options=options)
    if options is not None and not options.is_default():
        raise ValueError(f"{spec}: temperature, system prompt, extra body and API key variable "
                         "apply to openai: models only")
    if parsed.kind == "instant":
        from .instant import InstantBackend

        return InstantBackend(spec, parsed.delay_ms)
    from .hf import HFBackend

    if parsed.kind == "hf":
        assert parsed.path is not None
        folder = parsed.path
    else:
        from .. import demo_models

        folder = demo_models.build(parsed.name, models_dir or default_models_dir(), progress)
        import torch

        # Demo models are a few MB: extra CPU threads only add synchronisation, and on a busy
        # machine they make generation many times slower. This process runs one model only.
        torch.set_num_threads(1)
    return HFBackend(
        folder, spec=spec, max_new_tokens=max_new_tokens, device=device, timeout_s=timeout_s
    )
