"""The openai: backend as a serving client: reused connections, TLS, kernel timestamps and the
request options, against `tests/serving_server.py` (whose own clock is the truth)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from vlmd_agent.evaluate.backends import BackendError, Request
from vlmd_agent.evaluate.backends.base import RequestOptions
from vlmd_agent.evaluate.backends.netclock import kernel_stamps_possible
from vlmd_agent.evaluate.backends.openai import OpenAIBackend

HERE = Path(__file__).parent


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """`tests/serving_server.py` with `args`; yields its base URL (http or https)."""
    cmd = [sys.executable, str(HERE / "serving_server.py"), *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("PORT "), line
            yield f"{'https' if '--tls' in args else 'http'}://127.0.0.1:{int(line.split()[1])}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving() as url:
        yield url


def stats(url: str, **kw: Any) -> dict[str, int]:
    return dict(httpx.get(f"{url}/stats", **kw).json())


def truths(url: str, **kw: Any) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in httpx.get(f"{url}/truth", **kw).json()}


def ask(i: int) -> Request:
    return Request(f"question {i} {threading.get_ident()}", b"\x89PNG", max_new_tokens=16)


def test_one_connection_serves_every_request_of_a_sequence(server: str) -> None:
    before = stats(server)["connections"]
    backend = OpenAIBackend("stream?first_ms=2&gap_ms=1&tokens=4", server)
    try:
        answers = [backend.generate(ask(i)) for i in range(6)]
    finally:
        backend.close()
    assert [a.text for a in answers] == ["t0 t1 t2 t3"] * 6
    # one for the backend's six requests, one for the GET /stats that reads the count
    assert stats(server)["connections"] - before == 2
    assert backend.pool.opened == 1


def test_concurrent_requests_hold_one_connection_each_and_reuse_them(server: str) -> None:
    before = stats(server)["connections"]
    backend = OpenAIBackend("stream?first_ms=20&gap_ms=2&tokens=3", server)
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(backend.generate, [ask(i) for i in range(16)]))
    finally:
        backend.close()
    assert all(a.text == "t0 t1 t2" for a in answers)
    assert backend.pool.opened == 4
    assert stats(server)["connections"] - before == 5


def test_a_connection_the_server_closed_while_idle_is_replaced(server: str) -> None:
    backend = OpenAIBackend("stream?first_ms=1&gap_ms=1&tokens=2&drop=1", server)
    try:
        answers = [backend.generate(ask(i)) for i in range(3)]
    finally:
        backend.close()
    assert [a.text for a in answers] == ["t0 t1"] * 3
    assert backend.pool.opened == 3


@pytest.mark.skipif(not kernel_stamps_possible(), reason="kernel timestamps: 64-bit Linux only")
def test_kernel_stamps_agree_with_the_servers_clock_and_name_it(server: str) -> None:
    backend = OpenAIBackend("stream?first_ms=30&gap_ms=15&tokens=6", server)
    try:
        with ThreadPoolExecutor(4) as pool:
            requests = [ask(i) for i in range(12)]
            answers = list(pool.map(backend.generate, requests))
    finally:
        backend.close()
    truth = truths(server)
    errors, tpot = [], []
    for request, answer in zip(requests, answers, strict=True):
        t = truth[request.prompt]
        assert t["clock"] == "kernel" and answer.timing_source == "kernel"
        assert answer.ttft_ms is not None and answer.tpot_ms is not None
        errors.append(answer.ttft_ms - (t["first_ns"] - t["rx_ns"]) / 1e6)
        tpot.append(answer.tpot_ms / ((t["end_ns"] - t["first_ns"]) / 1e6 / 5) - 1)
        assert answer.request_start is not None
        assert abs(answer.request_start - t["rx_ns"] / 1e9) < 0.002
    # both ends stamped by the same kernel, microseconds apart on loopback; a chunk read later
    # than the next one's arrival can only be late, never early
    assert min(errors) > -0.05 and statistics.median(errors) < 0.5, errors
    assert statistics.median(abs(x) for x in tpot) < 0.01, tpot


@pytest.mark.skipif(not kernel_stamps_possible(), reason="kernel timestamps: 64-bit Linux only")
def test_a_client_that_reads_late_still_measures_when_the_bytes_came(server: str) -> None:
    # A busy thread that keeps the GIL for up to 50 ms at a time: every read of the stream
    # waits for it (twice: the poll, then the read), so the process's own clock reads late,
    # the kernel's does not. Chunks far apart: one read late past the next chunk's arrival
    # would carry that arrival's stamp (TCP merges unread segments).
    backend = OpenAIBackend("stream?first_ms=40&gap_ms=300&tokens=3", server)
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            sum(range(1000))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    busy = threading.Thread(target=hog)
    busy.start()
    try:
        requests = [ask(i) for i in range(5)]
        answers = [backend.generate(r) for r in requests]
    finally:
        stop.set()
        busy.join()
        sys.setswitchinterval(interval)
        backend.close()
    truth = truths(server)
    kernel, user = [], []
    for request, answer in zip(requests, answers, strict=True):
        t = truth[request.prompt]
        true_ttft = (t["first_ns"] - t["rx_ns"]) / 1e6
        assert answer.ttft_ms is not None and answer.user_clock is not None
        kernel.append(answer.ttft_ms - true_ttft)
        user.append((answer.user_clock[0] or 0.0) - true_ttft)
    assert max(abs(e) for e in kernel) < 1.0, kernel
    assert max(user) > 5.0, user  # the process's own clock was late at least once


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    assert shutil.which("openssl"), "the openssl command is needed (scripts/setup.sh installs it)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_is_handshaken_once_per_connection_and_never_inside_a_ttft(
        certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with serving("--tls", str(cert), str(key)) as url:
        backend = OpenAIBackend("stream?first_ms=30&gap_ms=5&tokens=4", url)
        try:
            requests = [ask(i) for i in range(5)]
            answers = [backend.generate(r) for r in requests]
        finally:
            backend.close()
        seen = stats(url)  # httpx trusts $SSL_CERT_FILE too
        truth = truths(url)
    assert [a.text for a in answers] == ["t0 t1 t2 t3"] * 5
    assert seen["tls"] == 2 and seen["connections"] == 2  # the backend's one, and this GET
    expected = "kernel" if kernel_stamps_possible() else "user"
    for request, answer in zip(requests, answers, strict=True):
        assert answer.timing_source == expected
        t = truth[request.prompt]
        # the server's clock is its process's here: allow for its scheduling
        assert answer.ttft_ms is not None
        assert abs(answer.ttft_ms - (t["first_ns"] - t["rx_ns"]) / 1e6) < 3.0


def test_an_untrusted_certificate_is_a_backend_error_naming_it(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with serving("--tls", str(cert), str(key)) as url:
        backend = OpenAIBackend("stream?first_ms=1", url)
        try:
            with pytest.raises(BackendError) as info:
                backend.generate(ask(0))
        finally:
            backend.close()
    assert info.value.reason == "backend_error"
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message


def test_request_options_and_the_api_key_reach_the_server(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVING_KEY", "sk-test-123")
    options = RequestOptions(temperature=0.7, system_prompt="Answer with one letter.",
                             extra_body={"top_p": 0.5, "seed": 7}, api_key_env="MY_SERVING_KEY")
    backend = OpenAIBackend("stream?first_ms=1&gap_ms=1&tokens=2", server, options=options)
    try:
        request = ask(0)
        backend.generate(request)
    finally:
        backend.close()
    t = truths(server)[request.prompt]
    body = t["body"]
    assert t["auth"] == "Bearer sk-test-123"
    assert body["temperature"] == 0.7 and body["top_p"] == 0.5 and body["seed"] == 7
    assert body["messages"][0] == {"role": "system", "content": "Answer with one letter."}
    assert body["messages"][1]["role"] == "user"


def test_an_api_key_variable_that_is_not_set_is_named_not_guessed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default")
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR is not set"):
        OpenAIBackend("m", "http://127.0.0.1:9",
                      options=RequestOptions(api_key_env="NO_SUCH_KEY_VAR"))
