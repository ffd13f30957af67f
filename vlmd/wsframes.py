"""WebSocket frames for the feed: serialised once per message, not once per connection.

The feed sends the same frame text to every subscriber. Under hypercorn, wsproto serialises a
message for each connection, and copies it five times on the way: ``str.encode``,
``bytearray(payload)``, ``header + payload``, ``bytearray(...)`` of that, and ``b"" += ...`` in
``Connection.send``. With 10 dashboards and 300 KB frames that is 15 MB of copying a batch, and
it evicts the caches the ingest path runs in.

`install` replaces ``wsproto.frame_protocol.FrameProtocol.send_data`` with `send_data`, which
builds the frame as one ``bytes`` (header + payload) and, when the same ``str`` object is sent
again, returns the same bytes. It takes only the plain case: a server connection without
extensions (vlmd negotiates none), a whole message (``fin``), not inside a fragmented one; any
other call goes to wsproto's own method. The bytes are identical to wsproto's (tested), and
``Connection.send``'s ``b"" += frame`` returns an exact ``bytes`` operand as it is.
"""

from __future__ import annotations

import struct
from typing import Any

from wsproto.frame_protocol import FrameProtocol, Opcode

_original = FrameProtocol.send_data
_last: tuple[str, bytes] | None = None  # the last text sent and its frame


def frame(opcode: Opcode, payload: bytes) -> bytes:
    """One unmasked, final frame of `payload` (RFC 6455 §5.2)."""
    n = len(payload)
    if n <= 125:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def send_data(self: FrameProtocol, payload: Any = b"", fin: bool = True) -> Any:
    """`FrameProtocol.send_data`, with the plain server case done in one pass (see above)."""
    global _last
    if self.client or self.extensions or not fin or self._outbound_opcode is not None:
        return _original(self, payload, fin)
    if type(payload) is str:
        last = _last
        if last is not None and last[0] is payload:
            return last[1]
        data = frame(Opcode.TEXT, payload.encode("utf-8"))
        _last = (payload, data)
        return data
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return frame(Opcode.BINARY, bytes(payload))
    return _original(self, payload, fin)


def install() -> None:
    """Use `send_data` for every wsproto connection in this process (idempotent)."""
    FrameProtocol.send_data = send_data  # type: ignore[method-assign]
