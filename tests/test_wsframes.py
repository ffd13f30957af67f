"""vlmd.wsframes: the feed's WebSocket frames, serialised once, byte for byte as wsproto's."""

from __future__ import annotations

import pytest
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from vlmd import wsframes

SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 318_000]


def wsproto_frame(payload: str | bytes, *, client: bool = False, fin: bool = True) -> bytes:
    """What wsproto itself sends for `payload` on a fresh connection."""
    return bytes(wsframes._original(FrameProtocol(client=client, extensions=[]), payload, fin))


@pytest.mark.parametrize("size", SIZES)
def test_text_frames_are_wsprotos(size: int) -> None:
    text = ("é" + "x" * size)[:size]  # non-ASCII: the length field counts UTF-8 bytes
    ours = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    assert type(ours) is bytes
    assert ours == wsproto_frame(text)


@pytest.mark.parametrize("size", SIZES)
def test_binary_frames_are_wsprotos(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    for payload in (data, bytearray(data), memoryview(data)):
        ours = wsframes.send_data(FrameProtocol(client=False, extensions=[]), payload)
        assert ours == wsproto_frame(data)


def test_the_same_text_is_serialised_once_for_every_connection() -> None:
    text = '[{"seq": 1}]' * 1000
    first = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    again = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text)
    assert again is first
    equal_but_new = "".join([text[:10], text[10:]])  # another str object, equal text
    other = wsframes.send_data(FrameProtocol(client=False, extensions=[]), equal_but_new)
    assert other == first and other is not first
    different = wsframes.send_data(FrameProtocol(client=False, extensions=[]), text + " ")
    assert different == wsproto_frame(text + " ")


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
    # with an extension (deflate) the payload is the extension's business
    deflate = PerMessageDeflate()
    deflate._enabled = True
    with_ext = FrameProtocol(client=False, extensions=[deflate])
    assert wsframes.send_data(with_ext, "a" * 1000)[0] & 0x40  # RSV1: compressed


def test_install_puts_it_in_wsproto() -> None:
    wsframes.install()
    assert FrameProtocol.send_data is wsframes.send_data
