"""The in-process hf: backend and demo: models on CPU."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmd_agent.evaluate import demo_models
from vlmd_agent.evaluate.backends import BackendError, Generation, Request, load_backend
from vlmd_agent.evaluate.backends.hf import CPU_NOTE, HFBackend

IMAGE_TOKENS_TINY = 16  # a lower bound on the image tokens (tiny now has 64: 32 px, 4 px patches)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buf, "PNG")
    return buf.getvalue()


REQUEST = Request("What colour is the image? A. red B. blue", _png((200, 10, 10)), max_new_tokens=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: OpenMP spinning on both makes timings 20x worse.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> Iterator[HFBackend]:
    backend = load_backend("demo:tiny", models_dir=models_dir, device="cpu")
    assert isinstance(backend, HFBackend)
    yield backend
    backend.close()


def _check_timings(gen: Generation) -> None:
    assert gen.ttft_ms is not None and gen.tpot_ms is not None
    assert 0 < gen.ttft_ms < gen.e2e_ms
    assert gen.tpot_ms > 0
    assert gen.output_tokens is not None and gen.output_tokens >= 2
    assert gen.tpot_ms == pytest.approx((gen.e2e_ms - gen.ttft_ms) / (gen.output_tokens - 1))
    assert len(gen.itl_ms) == gen.output_tokens - 1 and min(gen.itl_ms) > 0
    # TTFT + the inter-token gaps end at the last token, which is before e2e ends.
    assert gen.ttft_ms + sum(gen.itl_ms) <= gen.e2e_ms


def test_demo_tiny_generates_with_consistent_timings(tiny: HFBackend) -> None:
    gen = tiny.generate(REQUEST)
    _check_timings(gen)
    assert gen.output_tokens is not None and gen.output_tokens <= 8
    assert gen.tokens_source == "tokenizer"
    assert gen.input_tokens is not None and gen.input_tokens > IMAGE_TOKENS_TINY
    assert isinstance(gen.text, str)


def test_tokens_and_text_are_the_models_own_greedy_output(tiny: HFBackend) -> None:
    gen = tiny.generate(REQUEST)
    inputs = tiny._prepare(REQUEST)
    with torch.inference_mode():
        out = tiny.model.generate(**inputs, max_new_tokens=REQUEST.max_new_tokens, do_sample=False)
    prompt = inputs["input_ids"].shape[-1]
    new = out[0, prompt:]
    assert (gen.input_tokens, gen.output_tokens) == (prompt, len(new))  # one stamp per token
    assert gen.text == tiny.processor.decode(new, skip_special_tokens=True).strip()


def test_the_token_clock_skips_the_prompt_and_stops_a_generation_past_its_deadline(
        tiny: HFBackend) -> None:
    clock = tiny._clock_type(time.perf_counter_ns() + 10**12)
    clock.put(torch.tensor([[1, 2, 3, 4]]))  # generate() hands over the prompt first
    clock.put(torch.tensor([5]))
    clock.put(torch.tensor([6]))
    assert len(clock.token_ns) == 2 and clock.token_ns[0] <= clock.token_ns[1]
    late = tiny._clock_type(time.perf_counter_ns() - 1)
    with pytest.raises(BackendError) as info:
        late.put(torch.tensor([5]))
    assert info.value.reason == "timeout"


def test_cpu_reports_no_vram(tiny: HFBackend) -> None:
    gen = tiny.generate(REQUEST)
    assert (gen.vram_before_mb, gen.vram_peak_delta_mb, gen.vram_source) == (None, None, None)
    assert gen.vram_note == CPU_NOTE == "cpu: no VRAM measured"
    metrics = gen.metrics()
    assert metrics["vram_note"] == CPU_NOTE and metrics["vram_peak_delta_mb"] is None
    assert metrics["itl_ms"] == list(gen.itl_ms)
    assert {"ttft_ms", "tpot_ms", "e2e_ms", "input_tokens", "output_tokens"} <= set(metrics)


def test_hf_path_runs_the_same_model_greedily(tiny: HFBackend, models_dir: Path) -> None:
    backend = load_backend(f"hf:{models_dir / 'tiny'}", device="cpu")
    try:
        gen = backend.generate(REQUEST)
        _check_timings(gen)
        assert backend.spec == f"hf:{models_dir / 'tiny'}"
        assert gen.text == tiny.generate(REQUEST).text  # greedy: same model, same answer
    finally:
        backend.close()


def test_bad_image_bytes_are_bad_input(tiny: HFBackend) -> None:
    for image in (b"not an image", _png((1, 2, 3))[:40]):
        with pytest.raises(BackendError) as info:
            tiny.generate(Request("What colour?", image))
        assert info.value.reason == "bad_input"
        assert "cannot decode image" in info.value.message


def test_several_images_each_reach_the_model(tiny: HFBackend) -> None:
    one = tiny.generate(REQUEST)
    blue = (_png((10, 10, 200)), "image/png")
    two = tiny.generate(Request(REQUEST.prompt, REQUEST.image, max_new_tokens=8,
                                extra_images=(blue,)))
    three = tiny.generate(Request(REQUEST.prompt, REQUEST.image, max_new_tokens=8,
                                  extra_images=(blue, blue)))
    assert one.input_tokens is not None and two.input_tokens is not None
    per_image = two.input_tokens - one.input_tokens
    assert per_image >= IMAGE_TOKENS_TINY  # the second image's tokens are in the prompt
    assert three.input_tokens == one.input_tokens + 2 * per_image
    with pytest.raises(BackendError, match="bad_input: cannot decode image 2"):
        tiny.generate(Request(REQUEST.prompt, REQUEST.image, extra_images=((b"x", "image/png"),)))


def test_the_backend_cap_limits_the_request_budget(models_dir: Path) -> None:
    backend = load_backend("demo:tiny", models_dir=models_dir, device="cpu", max_new_tokens=3)
    try:
        gen = backend.generate(Request("What colour?", _png((0, 0, 255)), max_new_tokens=50))
        assert gen.output_tokens is not None and gen.output_tokens <= 3
    finally:
        backend.close()


def test_a_generation_past_the_timeout_fails_as_timeout(models_dir: Path) -> None:
    backend = load_backend("demo:tiny", models_dir=models_dir, device="cpu", timeout_s=0.001)
    try:
        with pytest.raises(BackendError) as info:
            backend.generate(REQUEST)
        assert info.value.reason == "timeout"
    finally:
        backend.close()


def test_missing_hf_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hf model folder not found"):
        load_backend(f"hf:{tmp_path / 'nothing'}")


def test_demo_small_is_over_ten_times_tiny(tiny: HFBackend, models_dir: Path) -> None:
    small = load_backend("demo:small", models_dir=models_dir, device="cpu")
    assert isinstance(small, HFBackend)
    try:
        assert small.parameters > 10 * tiny.parameters
        assert 100_000 < tiny.parameters < 250_000
        gen = small.generate(REQUEST)
        _check_timings(gen)
        assert gen.input_tokens is not None and gen.input_tokens > 64  # 64x64 image, 8px patches
    finally:
        small.close()
    assert (models_dir / "small" / demo_models.MANIFEST).is_file()
