"""vlmd.live.wsframes: the feed's WebSocket frames, built once for every connection; plain frames
byte for byte as wsproto's, compressed ones readable by wsproto's own client."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypercorn.protocol import ws_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from vlmd.live import wsframes
from vlmd.live.wsframes import PLAIN, FrameText

SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 318_000]


def wsproto_frame(payload: str | bytes, *, client: bool = False, fin: bool = True) -> bytes:
    """What wsproto itself sends for `payload` on a fresh connection."""
    return bytes(wsframes._original(FrameProtocol(client=client, extensions=[]), payload, fin))


def feed_text(n: int, seed: int = 1) -> FrameText:
    """A feed-like JSON array of `n` item events with varied values, as a FrameText."""
    rng = random.Random(seed)
    return FrameText.of(orjson.dumps([
        {"seq": i, "key": f"r/item/{i}/ok", "run": "r", "kind": "item.completed",
         "ts": 1.7e9 + rng.random(), "body": {"item": f"q{i}", "answer": rng.choice("ABCD"),
                                              "ttft_ms": rng.random() * 50}}
        for i in range(n)]))


def connected(offer: PerMessageDeflate | None) -> tuple[WSConnection, WSConnection]:
    """A server and a client connection after a real wsproto handshake in memory, the server
    accepting what hypercorn accepts (its `Handshake` with `install`'s SharedDeflate)."""
    wsframes.install()
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/api/feed",
                                            extensions=[offer] if offer else [])))
    request = next(server.events())
    assert isinstance(request, Request)
    client.receive_data(server.send(AcceptConnection(extensions=[wsframes.SharedDeflate()])))
    assert isinstance(next(client.events()), AcceptConnection)
    return server, client


def received(client: WSConnection, data: bytes) -> str:
    client.receive_data(data)
    message = next(client.events())
    assert isinstance(message, TextMessage) and message.message_finished
    return message.data


@pytest.mark.parametrize("size", SIZES)
def test_text_frames_are_wsprotos(size: int) -> None:
    text = ("é" + "x" * size)[:size]  # non-ASCII: the length field counts UTF-8 bytes
    ours = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    assert type(ours) is bytes
    assert ours == wsproto_frame(text)
    framed = wsframes.send_data(FrameProtocol(client=False, extensions=[]),
                                FrameText.of(text.encode()))
    assert framed == wsproto_frame(text)


@pytest.mark.parametrize("size", SIZES)
def test_binary_frames_are_wsprotos(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    for payload in (data, bytearray(data), memoryview(data)):
        ours = wsframes.send_data(FrameProtocol(client=False, extensions=[]), payload)
        assert ours == wsproto_frame(data)


def test_a_frame_text_is_built_once_for_every_connection() -> None:
    text = feed_text(300)
    first = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    again = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    assert again is first and text.wire == {PLAIN: first}
    equal_but_new = FrameText.of(text.encode())  # another frame, equal text: built anew
    other = wsframes.send_data(FrameProtocol(client=False, extensions=[]), equal_but_new)
    assert other == first and other is not first


@pytest.mark.parametrize("offer", [
    PerMessageDeflate(),  # wsproto's offer: both windows at 15
    PerMessageDeflate(server_max_window_bits=9),  # the smallest window a server may use
    PerMessageDeflate(client_no_context_takeover=True, server_max_window_bits=12)])
def test_deflated_frames_are_shared_and_read_by_wsprotos_client(
        offer: PerMessageDeflate) -> None:
    texts = [feed_text(2000, seed=1), feed_text(5, seed=2), FrameText.of(b""), feed_text(2000)]
    connections = [connected(PerMessageDeflate(**vars_of(offer))) for _ in range(3)]
    for text in texts:
        sent = [server.send(TextMessage(data=text)) for server, _ in connections]
        assert all(s is sent[0] for s in sent)  # compressed once, for every connection
        assert sent[0][0] == 0x80 | 0x40 | 0x1  # FIN, RSV1 (compressed), TEXT
        for (_, client), data in zip(connections, sent, strict=True):
            assert received(client, data) == text  # each message inflates on its own
    bits = offer.server_max_window_bits
    assert set(texts[0].wire) == {bits}
    assert len(texts[0].wire[bits]) < len(texts[0].encode()) / 4


def vars_of(offer: PerMessageDeflate) -> dict[str, Any]:
    return {"client_no_context_takeover": offer.client_no_context_takeover,
            "client_max_window_bits": offer.client_max_window_bits,
            "server_no_context_takeover": offer.server_no_context_takeover,
            "server_max_window_bits": offer.server_max_window_bits}


def test_the_window_is_kept_so_a_small_window_client_can_inflate() -> None:
    # back-references farther than 512 bytes would break a client with a 9-bit window
    text = FrameText.of(orjson.dumps([{"filler": f"{i:0600d}", "same": "x" * 400}
                                      for i in range(50)]))
    data = wsframes.wire(text, 9)
    assert data[1] == 126  # a 16-bit length follows
    inflater = zlib.decompressobj(-9)
    assert inflater.decompress(data[4:] + b"\x00\x00\xff\xff") == text.encode()
    assert len(data) < len(text) / 2
    with pytest.raises(zlib.error):  # what the window keeps from happening
        zlib.decompressobj(-9).decompress(wsframes.wire(text, 15)[4:])


@pytest.mark.parametrize(("header", "bits"), [
    ("permessage-deflate; client_max_window_bits", 15),  # what Chromium and Firefox offer
    ("permessage-deflate; server_max_window_bits=10", 10),
    ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=11", 11),
    ("permessage-deflate; server_max_window_bits=99, permessage-deflate", 15),  # 1st refused
    ("permessage-deflate; server_max_window_bits=99", PLAIN),
    ("x-unknown", PLAIN), ("", PLAIN), (None, PLAIN)])
def test_negotiated_is_what_the_handshake_accepts(header: str | None, bits: int) -> None:
    assert wsframes.negotiated(header) == bits


def test_other_cases_go_to_wsproto() -> None:
    # a client masks its frames: a fresh random mask each time, so compare the unmasked parts
    client = FrameProtocol(client=True, extensions=[])
    masked = wsframes.send_data(client, "hello")
    assert masked[1] & 0x80 and len(masked) == 2 + 4 + 5
    # a fragmented message: continuation frames and the opcode state are wsproto's
    proto = FrameProtocol(client=False, extensions=[])
    assert bytes(wsframes.send_data(proto, "ab", False)) == b"\x01\x02ab"  # TEXT, not fin
    assert bytes(wsframes.send_data(proto, "cd", True)) == b"\x80\x02cd"  # CONTINUATION, fin
    assert bytes(wsframes.send_data(proto, "ef")) == b"\x81\x02ef"  # a new whole message
    # deflate with context takeover: wsproto's own compressor, which the next message uses
    takeover = PerMessageDeflate()
    takeover._enabled = True
    text = feed_text(50)
    with_ext = FrameProtocol(client=False, extensions=[takeover])
    sent = wsframes.send_data(with_ext, text)
    assert sent[0] & 0x40 and text.wire == {}  # compressed, and not by us
    # a plain str on a shared-deflate connection: compressed by wsproto, not cached anywhere
    shared = wsframes.SharedDeflate()
    shared._enabled = True
    assert wsframes.send_data(FrameProtocol(client=False, extensions=[shared]), "a" * 999)[0] \
        & 0x40


def test_install_puts_it_in_wsproto_and_hypercorn() -> None:
    wsframes.install()
    assert FrameProtocol.send_data is wsframes.send_data
    assert ws_stream.PerMessageDeflate is wsframes.SharedDeflate  # type: ignore[attr-defined]
    status, headers, _ = ws_stream.Handshake(
        [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", b"k"),
         (b"sec-websocket-version", b"13"),
         (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")],
        "1.1").accept(None, [])
    assert status == 101
    assert dict(headers)[b"sec-websocket-extensions"] == (
        b"permessage-deflate; server_no_context_takeover; client_max_window_bits=15")


def test_the_library_internals_it_patches_are_all_there() -> None:
    """Fails, naming the attribute, when a wsproto or hypercorn release moves one (then
    update wsframes and the bounds in pyproject.toml together)."""
    assert wsframes.missing_internals() == [], (
        "vlmd.live.wsframes relies on library internals that the installed wsproto/hypercorn "
        "lack")


def test_a_missing_internal_is_named_and_nothing_is_patched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FrameProtocol, "send_data", FrameProtocol.send_data)  # restored after
    monkeypatch.delattr(ws_stream, "PerMessageDeflate")
    assert wsframes.missing_internals() == ["hypercorn.protocol.ws_stream.PerMessageDeflate"]
    before = FrameProtocol.send_data
    assert wsframes.install() is False
    assert FrameProtocol.send_data is before


def test_only_the_daemon_installs_the_patches() -> None:
    """One place: `serve` installs them once; building the app does not."""
    root = Path(wsframes.__file__).resolve().parents[1]
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if "wsframes.install()" in p.read_text())
    assert callers == ["daemon/serve.py"]
