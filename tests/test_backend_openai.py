"""The openai: backend against a scripted SSE server with known timings and a real
``transformers serve`` serving a demo model."""

from __future__ import annotations

import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vlmd_agent.evaluate import demo_models
from vlmd_agent.evaluate.backends import BackendError, Request, load_backend
from vlmd_agent.evaluate.backends.openai import REMOTE_NOTE, OpenAIBackend

HERE = Path(__file__).parent
TOLERANCE_MS = 2.0


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


REQUEST = Request("What colour is the image?", _png(), max_new_tokens=16)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    script = [sys.executable, str(HERE / "streaming_server.py")]
    with subprocess.Popen(script, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("PORT "), line
            yield f"http://127.0.0.1:{int(line.split()[1])}"
        finally:
            _stop(proc)


Factory = Callable[..., OpenAIBackend]


@pytest.fixture
def scripted(scripted_url: str) -> Iterator[Factory]:
    """Backends for scripts on the scripted server, closed after the test."""
    made: list[OpenAIBackend] = []

    def make(script: str, timeout_s: float = 10.0) -> OpenAIBackend:
        made.append(OpenAIBackend(script, scripted_url, max_new_tokens=16, timeout_s=timeout_s))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def test_request_body_streams_with_usage_and_a_data_url(
    scripted: Factory, scripted_url: str
) -> None:
    backend = scripted("stream?first_ms=1&gap_ms=1")
    backend.generate(REQUEST)
    sent = httpx.get(f"{scripted_url}/last").json()["body"]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0
    assert sent["max_tokens"] == 16
    image, text = sent["messages"][0]["content"]
    assert text == {"type": "text", "text": "What colour is the image?"}
    prefix, data = image["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(data) == REQUEST.image


def test_several_images_go_in_order_before_the_prompt(
    scripted: Factory, scripted_url: str
) -> None:
    gif = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
    request = Request("Same picture?", _png(), extra_images=((gif, "image/gif"),))
    answer = scripted("stream?first_ms=1&gap_ms=1&text=No,%20they%20differ.").generate(request)
    assert answer.text == "No, they differ." and answer.output_tokens == 3
    first, second, text = httpx.get(f"{scripted_url}/last").json()["body"]["messages"][0][
        "content"]
    assert [part["type"] for part in (first, second, text)] == ["image_url", "image_url", "text"]
    assert second["image_url"]["url"] == "data:image/gif;base64," + base64.b64encode(gif).decode()
    assert text["text"] == "Same picture?"


def test_ttft_and_tpot_match_the_injected_delays(scripted: Factory, scripted_url: str) -> None:
    backend = scripted("stream?first_ms=80&gap_ms=20&tokens=5")
    runs, transit = [], []
    for _ in range(7):
        sent_ns = time.perf_counter_ns()
        runs.append(backend.generate(REQUEST))
        # The request's way to the server (client encoding, scheduler wake-ups on a busy
        # machine) is part of a true TTFT but not of the injected delay: measure it apart.
        received_ns = httpx.get(f"{scripted_url}/last").json()["received_ns"]
        transit.append((received_ns - sent_ns) / 1e6)
    pairs = list(zip(runs, transit, strict=True))
    ttft = statistics.median((g.ttft_ms or 0.0) - t for g, t in pairs)
    tpot = statistics.median(g.tpot_ms or 0.0 for g in runs)
    itl = statistics.median(gap for g in runs for gap in g.itl_ms)
    assert all((g.ttft_ms or 0.0) >= 80.0 for g in runs)
    assert abs(ttft - 80.0) < TOLERANCE_MS, [(g.ttft_ms, t) for g, t in pairs]
    assert abs(tpot - 20.0) < TOLERANCE_MS, [g.tpot_ms for g in runs]
    assert abs(itl - 20.0) < TOLERANCE_MS
    first = runs[0]
    assert first.text == "t0 t1 t2 t3 t4"
    assert (first.output_tokens, first.input_tokens, first.tokens_source) == (5, 42, "usage")
    assert len(first.itl_ms) == 4
    assert first.vram_peak_delta_mb is None and first.vram_before_mb is None
    assert first.vram_source is None and first.vram_note == REMOTE_NOTE


def test_without_usage_tokens_are_counted_from_chunks(scripted: Factory) -> None:
    backend = scripted("stream?first_ms=5&gap_ms=2&tokens=3&usage=0")
    gen = backend.generate(REQUEST)
    assert (gen.output_tokens, gen.input_tokens, gen.tokens_source) == (3, None, "chunks")
    assert gen.tpot_ms == pytest.approx((gen.e2e_ms - (gen.ttft_ms or 0.0)) / 2)


def test_reasoning_content_counts_as_the_first_token(scripted: Factory) -> None:
    backend = scripted("reasoning?first_ms=30&gap_ms=30&tokens=2")
    gen = backend.generate(REQUEST)
    assert gen.ttft_ms is not None and 29.0 < gen.ttft_ms < 45.0
    assert gen.text == "t1"


def test_a_single_token_has_no_tpot(scripted: Factory) -> None:
    backend = scripted("stream?first_ms=5&tokens=1")
    gen = backend.generate(REQUEST)
    assert gen.output_tokens == 1 and gen.tpot_ms is None and gen.itl_ms == ()


def test_non_streamed_answer_is_accepted(scripted: Factory) -> None:
    gen = scripted("json").generate(REQUEST)
    assert (gen.text, gen.output_tokens, gen.tpot_ms) == ("B", 1, None)
    assert gen.ttft_ms == gen.e2e_ms


def test_http_500_is_a_backend_error_with_the_server_message(scripted: Factory) -> None:
    backend = scripted("error?status=500&message=engine crashed")
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    assert info.value.reason == "backend_error"
    assert "HTTP 500" in info.value.message and "engine crashed" in info.value.message


def test_http_400_about_the_image_is_bad_input(scripted: Factory) -> None:
    backend = scripted("error?status=400&message=cannot identify image file")
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    assert info.value.reason == "bad_input"
    assert "HTTP 400" in info.value.message and "cannot identify image" in info.value.message


def test_http_400_about_something_else_is_a_backend_error(scripted: Factory) -> None:
    backend = scripted("error?status=400&message=unsupported parameter: frobnicate")
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    assert info.value.reason == "backend_error"


def test_a_stalled_stream_times_out(scripted: Factory) -> None:
    backend = scripted("stall?stall_ms=5000", timeout_s=0.3)
    started = time.perf_counter()
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    assert info.value.reason == "timeout"
    assert time.perf_counter() - started < 2.0


def test_a_slow_stream_past_the_deadline_times_out(scripted: Factory) -> None:
    backend = scripted("stream?first_ms=100&gap_ms=150&tokens=6", timeout_s=0.4)
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    assert info.value.reason == "timeout"


def test_an_unreachable_server_is_a_backend_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = load_backend(f"openai:m@http://127.0.0.1:{port}/v1", timeout_s=2.0)
    with pytest.raises(BackendError) as info:
        backend.generate(REQUEST)
    backend.close()
    assert info.value.reason == "backend_error"
    assert info.value.message == f"connection refused (http://127.0.0.1:{port}/v1/chat/completions)"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("openai:model-without-url", "NAME@BASE_URL"),
        ("openai:@http://127.0.0.1:1", "NAME@BASE_URL"),
        ("vllm:x@http://h", "unknown kind 'vllm'"),
        ("nocolon", "expected one of"),
        ("demo:huge", "unknown demo model 'huge'"),
    ],
)
def test_bad_specs_name_the_problem_and_the_accepted_forms(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match="openai:NAME@BASE_URL") as info:
        load_backend(spec)
    assert problem in str(info.value)


def test_spec_name_may_contain_at_and_url_gets_v1() -> None:
    backend = load_backend("openai:org/model@rev@https://example.test:8000")
    assert isinstance(backend, OpenAIBackend)
    assert backend.model == "org/model@rev"
    assert backend.url == "https://example.test:8000/v1/chat/completions"
    backend.close()


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = demo_models.build("tiny", tmp_path_factory.mktemp("served-models"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(serve), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "transformers serve exited"
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "transformers serve did not answer in 60 s"
            time.sleep(0.2)
        yield url, folder
    finally:
        _stop(proc)


def test_real_transformers_serve_streams_a_demo_model(served_demo: tuple[str, Path]) -> None:
    url, folder = served_demo
    backend = load_backend(f"openai:{folder}@{url}", timeout_s=120)
    try:
        first = backend.generate(REQUEST)  # loads the model on the server
        gen = backend.generate(REQUEST)
    finally:
        backend.close()
    for g in (first, gen):
        assert g.text
        assert g.ttft_ms is not None and 0 < g.ttft_ms <= g.e2e_ms
        assert g.output_tokens is not None and g.output_tokens >= 1
        assert g.tokens_source == "usage"
        assert g.input_tokens is not None and g.input_tokens > 16  # 16 image tokens + prompt
    assert gen.ttft_ms is not None and first.ttft_ms is not None and gen.ttft_ms < first.ttft_ms
    # a real server keeps the connection alive: both streams, read to their end, used one
    assert isinstance(backend, OpenAIBackend) and backend.pool.opened == 1
    assert gen.timing_source in ("kernel", "user") and gen.request_start is not None
