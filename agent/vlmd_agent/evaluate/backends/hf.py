"""In-process transformers backend (``hf:PATH``): a local image-text-to-text model folder.

The model and processor load through `AutoProcessor` / `AutoModelForImageTextToText` with
``local_files_only=True``: nothing is fetched from a hub. Decoding is greedy. A streamer that
``generate`` calls once per decoding step only reads the clock (`TokenClock`), so TTFT is the
time from the start of the request (image decoding and preprocessing included, as a server would
count them) to the first generated token, and output tokens are counted from the model's own
token ids (``tokens_source="tokenizer"``). The same hook enforces the request's deadline: a
per-step clock comparison, cheaper than transformers' ``max_time``, which adds two tensor
operations to every step.

VRAM: on CUDA the peak delta is exact, from PyTorch's allocator (`_measure_cuda`); on CPU no
VRAM is measured and the fields stay ``None`` with a note saying so.

torch, transformers and Pillow are the agent's optional ``hf`` extra, imported here only.
"""

from __future__ import annotations

import gc
import io
import time
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from .base import BackendError, Generation, Request, VramSource, gaps_ms, ms, now_ns, tpot_ms

MIB = float(1 << 20)
CPU_NOTE = "cpu: no VRAM measured"


@dataclass(frozen=True)
class _Memory:
    """What the CUDA allocator said around one request, in MiB."""

    before_mb: float | None = None
    peak_delta_mb: float | None = None


_NO_MEMORY = _Memory()  # on CPU: nothing measured


def _token_clock(base: type) -> type:
    """A `BaseStreamer` subclass, `TokenClock`, that stamps each decoding step's token."""

    class TokenClock(base):  # type: ignore[misc]
        """Records when each generated token reaches the host; raises ``timeout`` past
        `deadline_ns`. Nothing else: it runs once per decoding step, inside the timed path.

        ``stamps`` holds one reading per `put`; the first `put` carries the prompt, each later
        one the single token of a greedy, batch-of-one decoding step (all `HFBackend` runs), so
        the tokens' times are ``stamps[1:]`` (`token_ns`). Appending one clock reading is the
        whole per-step cost: no tensor is looked at.
        """

        def __init__(self, deadline_ns: int) -> None:
            self.deadline_ns = deadline_ns
            self.stamps: list[int] = []
            self._record = self.stamps.append

        def put(self, value: Any) -> None:
            # generate() hands over `tokens.cpu()`: on a GPU that copy waits for the device, so
            # the stamp is when the token really exists.
            stamp = perf_counter_ns()
            if stamp > self.deadline_ns:
                raise BackendError("timeout", "generation ran past the request's time limit")
            self._record(stamp)

        def end(self) -> None:
            return None

        @property
        def token_ns(self) -> list[int]:
            """When each generated token reached the host (the prompt's `put` left out)."""
            return self.stamps[1:]

    return TokenClock


class HFBackend:
    """A transformers vision-language model running in this process.

    ``max_new_tokens`` caps every request's own ``max_new_tokens``; ``timeout_s`` bounds one
    request (checked at every decoding step) and turns an overrun into a ``timeout`` failure.
    """

    def __init__(
        self,
        path: Path,
        *,
        spec: str | None = None,
        max_new_tokens: int = 32,
        device: str = "auto",
        timeout_s: float = 300.0,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.generation.streamers import BaseStreamer

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"hf model folder not found: {folder}")
        self.spec = spec or f"hf:{folder}"
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._on_cuda = self.device.type == "cuda"
        self._vram_source: VramSource | None = "torch.cuda" if self._on_cuda else None
        self._vram_note = None if self._on_cuda else CPU_NOTE
        self._torch = torch
        self._clock_type = _token_clock(BaseStreamer)
        self.processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            folder, local_files_only=True
        )
        model: Any = AutoModelForImageTextToText.from_pretrained(
            folder, local_files_only=True, dtype="auto"
        )
        self.model: Any = model.to(self.device).eval()

    @property
    def parameters(self) -> int:
        """The number of model parameters."""
        return int(sum(p.numel() for p in self.model.parameters()))

    def generate(self, request: Request) -> Generation:
        """Answer ``request`` greedily, timing every token; see the module docstring.

        Errors:
            BackendError: ``bad_input`` (undecodable image), ``oom`` (CUDA out of memory; the
            cache is emptied so the next request can run), ``timeout``, ``backend_error``.
        """
        started_at = time.time()
        start = now_ns()
        clock = self._clock_type(start + int(self.timeout_s * 1e9))
        inputs = self._prepare(request)
        limit = max(1, min(request.max_new_tokens, self.max_new_tokens))
        prompt_len = int(inputs["input_ids"].shape[-1])
        if self._on_cuda:
            output, memory = self._measure_cuda(inputs, limit, clock)
        else:
            output, memory = self._run(inputs, limit, clock), _NO_MEMORY
        end = now_ns()
        e2e = ms(start, end)
        if e2e >= self.timeout_s * 1000.0:
            raise BackendError("timeout", f"generation took {e2e / 1000.0:.1f} s")
        text = self.processor.decode(output[0, prompt_len:], skip_special_tokens=True).strip()
        token_ns = clock.token_ns
        tokens = len(token_ns)
        ttft = ms(start, token_ns[0]) if tokens else None
        return Generation(
            text,
            ttft,
            tpot_ms(e2e, ttft, tokens),
            e2e,
            prompt_len,
            tokens,
            "tokenizer",
            gaps_ms(token_ns),
            memory.before_mb,
            memory.peak_delta_mb,
            self._vram_source,
            self._vram_note,
            started_at,
        )

    def close(self) -> None:
        """Drop the model and hand cached GPU memory back."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _prepare(self, request: Request) -> Any:
        from PIL import Image

        images = []
        for number, (data, _) in enumerate(request.images, 1):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    images.append(img.convert("RGB"))
            except Exception as exc:  # Pillow raises many types for undecodable input
                which = f" {number}" if len(request.images) > 1 else ""
                raise BackendError("bad_input", f"cannot decode image{which}: {exc}") from exc
        text = self._prompt_text(request.prompt, len(images))
        try:
            inputs = self.processor(images=images if len(images) > 1 else images[0], text=text,
                                    return_tensors="pt")
        except Exception as exc:
            raise BackendError("bad_input", f"processor rejected the input: {exc}") from exc
        # BatchFeature.to casts only floating tensors (pixel values) to the model's dtype.
        return inputs.to(self.device, dtype=self.model.dtype)

    def _prompt_text(self, prompt: str, images: int = 1) -> str:
        """The model's text: the chat template with one image entry per image, else the image
        token once per image before the prompt."""
        if getattr(self.processor, "chat_template", None):
            content: list[dict[str, str]] = [{"type": "image"} for _ in range(images)]
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return str(text)
        image_token = getattr(self.processor, "image_token", "<image>")
        return f"{image_token}\n" * images + prompt

    def _run(self, inputs: Any, limit: int, clock: Any) -> Any:
        try:
            with self._torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=limit,
                    do_sample=False,
                    streamer=clock,
                )
        except BackendError:
            raise
        except self._torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            raise BackendError("backend_error", f"{type(exc).__name__}: {exc}") from exc
        return output

    def _measure_cuda(self, inputs: Any, limit: int, clock: Any) -> tuple[Any, _Memory]:
        """Run one request on CUDA and measure its exact peak VRAM delta.

        ``reset_peak_memory_stats`` before, ``max_memory_allocated - memory_allocated(before)``
        after: the allocator's own bookkeeping, so short spikes are not missed (memory held by
        the caching allocator or other processes is not counted; NVML covers that).
        """
        cuda = self._torch.cuda
        device = self.device
        oom: str | None = None
        cuda.synchronize(device)
        before = cuda.memory_allocated(device)
        cuda.reset_peak_memory_stats(device)
        try:
            output = self._run(inputs, limit, clock)
            cuda.synchronize(device)
        except cuda.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        if oom is not None:
            # Outside the except block the traceback (and the tensors its frames hold) is gone,
            # so empty_cache can really return the memory and the run can go on.
            gc.collect()
            cuda.empty_cache()
            raise BackendError("oom", oom)
        peak = cuda.max_memory_allocated(device)
        memory = _Memory(before_mb=before / MIB, peak_delta_mb=(peak - before) / MIB)
        return output, memory
