"""WebSocket frames for the feed: built once per message, not once per connection.

The feed sends the same frame text to every subscriber. Under hypercorn, wsproto serialises a
message for each connection: it copies it five times on the way (``str.encode``,
``bytearray(payload)``, ``header + payload``, ``bytearray(...)`` of that, ``b"" += ...`` in
``Connection.send``), and, for a client that negotiated permessage-deflate (every browser
offers it), compresses it again for each connection at zlib's default level, on the trio
thread: ten dashboards took ~1.4 ms each per 1,000-event frame, more than the ingest itself.

Here a frame's text is a `FrameText`, a ``str`` that keeps the wire bytes built from it
(``wire``, by deflate window bits, 0 for none):

- `send_data` replaces ``wsproto.frame_protocol.FrameProtocol.send_data``. For the plain
  server case (a whole message, not inside a fragmented one) it returns the bytes built once
  for the `FrameText` and that connection's compression; any other call goes to wsproto's own
  method. Uncompressed frames are byte for byte wsproto's (tested).
- `SharedDeflate` is the permessage-deflate hypercorn offers, with ``server_no_context_takeover``
  (RFC 7692 §7.1.1.1: a server may add it to any offer): each message is compressed on its own,
  so the compressed bytes are the same for every connection with the same window.
- `build` fills ``wire`` ahead, in a worker thread if the caller likes (zlib releases the GIL):
  the ingest path does it while the COMMIT's fsync runs.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Any

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import split_comma_header

_original = FrameProtocol.send_data
LEVEL = 1  # zlib level of feed frames: 9x smaller for item events, 3x faster than level 6
PLAIN = 0  # the `FrameText.wire` key of the uncompressed frame


class FrameText(str):
    """A message's text and the frames built from it: ``wire[bits]`` for a connection that
    deflates with a window of `bits`, ``wire[PLAIN]`` for one that does not."""

    wire: dict[int, bytes]

    @classmethod
    def of(cls, data: bytes) -> FrameText:
        """The text of UTF-8 `data`, decoded once into the subclass (no extra copy)."""
        text = cls(data, "utf-8")
        text.wire = {}
        return text


class SharedDeflate(PerMessageDeflate):
    """permessage-deflate without server context takeover, so one compression of a message
    serves every connection with the same window (see the module docstring)."""

    def __init__(self, **params: Any) -> None:
        params.setdefault("server_no_context_takeover", True)
        super().__init__(**params)


def frame(opcode: Opcode, payload: bytes, *, compressed: bool = False) -> bytes:
    """One unmasked, final frame of `payload` (RFC 6455 §5.2); RSV1 marks a compressed one."""
    first = 0x80 | (0x40 if compressed else 0) | opcode
    n = len(payload)
    if n <= 125:
        header = struct.pack("!BB", first, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def deflated(data: bytes, bits: int) -> bytes:
    """`data` as one permessage-deflate message (RFC 7692 §7.2.1): raw DEFLATE with a window
    of `bits`, flushed, without the final ``00 00 ff ff``."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def wire(text: FrameText, bits: int) -> bytes:
    """The frame of `text` for a connection deflating with `bits` (`PLAIN`: none), built once."""
    built = text.wire.get(bits)
    if built is None:
        data = text.encode("utf-8")
        built = (frame(Opcode.TEXT, data) if bits == PLAIN else
                 frame(Opcode.TEXT, deflated(data, bits), compressed=True))
        text.wire[bits] = built
    return built


def build(wanted: Iterable[tuple[FrameText, int]]) -> None:
    """Build the frames `wanted` ahead of their sends; safe in a worker thread as long as no
    one sends these texts meanwhile."""
    for text, bits in wanted:
        wire(text, bits)


def window(extensions: list[Any]) -> int | None:
    """How a server connection with these (enabled) extensions sends a message: `PLAIN`, the
    window bits of a shared deflate, or None for anything else (wsproto's own way)."""
    if not extensions:
        return PLAIN
    if len(extensions) == 1:
        ext = extensions[0]
        if (isinstance(ext, PerMessageDeflate) and ext.server_no_context_takeover
                and getattr(ext, "_compressor", None) is None):  # not inside a message
            return ext.server_max_window_bits
    return None


def negotiated(offers: str | None) -> int:
    """The window bits a connection whose ``Sec-WebSocket-Extensions`` header is `offers`
    gets from hypercorn (which runs this same handshake), `PLAIN` without deflate."""
    if not offers:
        return PLAIN
    ext = SharedDeflate()
    try:
        accepted = server_extensions_handshake(split_comma_header(offers.encode()), [ext])
    except (ValueError, UnicodeError):
        return PLAIN
    return ext.server_max_window_bits if accepted and ext.enabled() else PLAIN


def send_data(self: FrameProtocol, payload: Any = b"", fin: bool = True) -> Any:
    """`FrameProtocol.send_data`, with the plain server case built once (see above)."""
    if self.client or not fin or self._outbound_opcode is not None:
        return _original(self, payload, fin)
    bits = window(self.extensions)
    if bits is None:
        return _original(self, payload, fin)
    if isinstance(payload, FrameText):
        return wire(payload, bits)
    if bits != PLAIN:
        return _original(self, payload, fin)
    if type(payload) is str:
        return frame(Opcode.TEXT, payload.encode("utf-8"))
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return frame(Opcode.BINARY, bytes(payload))
    return _original(self, payload, fin)


# The library internals this module relies on, beyond their public APIs: (where, attribute).
# pyproject.toml bounds wsproto and hypercorn to the versions these were checked against.
INTERNALS: tuple[tuple[str, str], ...] = (
    ("wsproto.frame_protocol.FrameProtocol", "send_data"),
    ("wsproto.frame_protocol.FrameProtocol()", "client"),
    ("wsproto.frame_protocol.FrameProtocol()", "extensions"),
    ("wsproto.frame_protocol.FrameProtocol()", "_outbound_opcode"),
    ("wsproto.extensions.PerMessageDeflate()", "_compressor"),
    ("wsproto.extensions.PerMessageDeflate()", "server_no_context_takeover"),
    ("wsproto.extensions.PerMessageDeflate()", "server_max_window_bits"),
    ("hypercorn.protocol.ws_stream", "PerMessageDeflate"),
)


def missing_internals() -> list[str]:
    """The `INTERNALS` the installed wsproto and hypercorn lack, as ``where.attribute`` (an
    empty list when `install` can patch them safely)."""
    from hypercorn.protocol import ws_stream

    objects = {
        "wsproto.frame_protocol.FrameProtocol": FrameProtocol,
        "wsproto.frame_protocol.FrameProtocol()": FrameProtocol(client=False, extensions=[]),
        "wsproto.extensions.PerMessageDeflate()": PerMessageDeflate(),
        "hypercorn.protocol.ws_stream": ws_stream,
    }
    return [f"{where}.{name}" for where, name in INTERNALS
            if not hasattr(objects[where], name)]


def install() -> bool:
    """Use `send_data` for every wsproto connection in this process, and `SharedDeflate` for
    hypercorn's WebSocket handshakes (idempotent). Called once, by `vlmd.daemon.serve`.

    When the installed libraries lack an internal this relies on (`missing_internals`), nothing
    is patched and the feed works the libraries' own way (slower with many clients): returns
    False, and the caller logs which attribute is missing.
    """
    from hypercorn.protocol import ws_stream

    if missing_internals():
        return False
    FrameProtocol.send_data = send_data  # type: ignore[method-assign]
    setattr(ws_stream, "PerMessageDeflate", SharedDeflate)  # noqa: B010 (a module global)
    return True
