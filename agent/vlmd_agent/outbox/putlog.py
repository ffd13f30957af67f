"""The outbox's put log: an append-only file that makes `Outbox.put` durable with one write(2).

A put appends one frame in a single write: a line ``N QUEUED``, then one line per event,
``LEN:KEY`` followed at once by the event's compact JSON (LEN is the key's length in bytes;
JSON text never holds a raw newline), so filing needs no JSON parsing. Once the write returns the
kernel holds the bytes, so they survive a crash of the process; a power loss may lose them, as
it may lose the spool's last SQLite commits (neither is fsynced). The sender moves the logged
events into the spool's ``pending`` table in one transaction and then empties the log, once per
batch rather than once per event, and off the producer's thread. A frame cut short by a crash
mid-write (its put never returned) is dropped whole, so a `put_many` stays all-or-nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

Row = tuple[str, str, float]  # event JSON, key, queued (the spool's pending columns)


class PutLog:
    """The put log at `path`; one writer (the `Outbox` holding the spool's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size

    def append(self, events: Sequence[tuple[str, str]], queued: float) -> None:
        """Log events, each (key, JSON text), put at `queued`, in one write.

        Errors:
            OSError: the write failed (e.g. the disk is full); nothing is logged.
        """
        if len(events) == 1:  # `Outbox.put`: one f-string, one encode
            ((key, text),) = events
            data = f"1 {queued!r}\n{_size(key)}:{key}{text}\n".encode()
        else:
            lines = [f"{_size(key)}:{key}{text}\n" for key, text in events]
            data = "".join([f"{len(events)} {queued!r}\n", *lines]).encode()
        written = os.write(self._fd, data)
        if written != len(data):  # a short write: cut it off, or the next frame would be lost
            os.ftruncate(self._fd, self.size)
            raise OSError(errno.ENOSPC, f"{self.path}: short write ({written} of {len(data)} "
                                        "bytes); is the disk full?")
        self.size += written

    def read(self) -> tuple[list[Row], int]:
        """The logged events in order, and how many bytes at the end a crash cut short."""
        data = os.pread(self._fd, self.size, 0)
        rows: list[Row] = []
        pos = 0
        while pos < len(data):
            try:
                end = data.index(b"\n", pos)
                count, queued = data[pos:end].split(b" ")
                frame = []
                for _ in range(int(count)):
                    colon = data.index(b":", end + 1)
                    key_end = colon + 1 + int(data[end + 1:colon])
                    end = data.index(b"\n", key_end)
                    key, text = data[colon + 1:key_end], data[key_end:end]
                    frame.append((text.decode(), key.decode(), float(queued)))
            except ValueError:  # a torn frame (bytes, digits or UTF-8): only ever the last one
                break
            rows += frame
            pos = end + 1
        return rows, len(data) - pos

    def clear(self) -> None:
        """Empty the log (its events are in the spool's table now)."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def close(self) -> None:
        os.close(self._fd)


def _size(key: str) -> int:
    """The key's length in UTF-8 bytes (an ASCII key, the usual one, is not encoded to count)."""
    return len(key) if key.isascii() else len(key.encode())
