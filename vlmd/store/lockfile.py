"""The log's lock file, ``<log>.lock``: one daemon at a time, and how far it acknowledged.

A daemon holds an exclusive ``flock`` on the file while it serves the log, so a second daemon on
the same log refuses to start, naming the holder's pid (the kernel releases the lock however the
holder dies, ``kill -9`` included). The file also records the highest seq the daemon has
acknowledged (`LogLock.acked`, after every commit; flushed to disk by `LogLock.sync`, which the
daemon calls every second and at exit). At the next start, a log whose last seq is below that
mark lost events that writers were told were stored (a WAL deleted or damaged while vlmd was
down): `LogLock.previous_acked` lets the daemon say so loudly instead of reusing their seqs
silently.

The file is a fixed-width text record, rewritten in place: ``pid <pid>`` and ``acked <seq>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

_RECORD = "pid {pid:>10}\nacked {acked:>20}\n"
_FIELD = re.compile(r"^(pid|acked) +(\d+)$", re.MULTILINE)


class LogInUse(RuntimeError):
    """Another process holds the log's lock; the message names the log and its pid."""

    def __init__(self, log: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "a process whose pid it did not record"
        super().__init__(f"{log}: in use by another vlmd ({who}); stop it first, or give this "
                         "one another [log] path")
        self.pid = pid


def _read(fd: int) -> dict[str, int]:
    text = os.pread(fd, 256, 0).decode("ascii", errors="replace")
    return {name: int(value) for name, value in _FIELD.findall(text)}


class LogLock:
    """The held lock of one log (`acquire`), and its acknowledged high-water mark."""

    def __init__(self, path: Path, fd: int, previous_acked: int) -> None:
        self.path = path
        self.previous_acked = previous_acked
        """The mark the previous holder left (0 for a new log)."""
        self._fd = fd
        self._acked = previous_acked
        self._synced = previous_acked

    @classmethod
    def acquire(cls, log: str | Path) -> LogLock:
        """Lock ``<log>.lock`` (made with mode 0600) for this process; raises LogInUse if
        another holds it, OSError if it cannot be made."""
        log = Path(log)
        path = log.with_name(log.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd).get("pid")
            os.close(fd)
            raise LogInUse(log, holder) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(path, fd, _read(fd).get("acked", 0))
        os.ftruncate(fd, 0)  # every record after this one has the same length
        lock._write()
        return lock

    def acked(self, seq: int) -> None:
        """Record that events up to `seq` are acknowledged (in the page cache: it survives a
        crash of vlmd at once, a crash of the machine after the next `sync`)."""
        if seq > self._acked:
            self._acked = seq
            self._write()

    def restart_at(self, seq: int) -> None:
        """Take `seq` as the mark even if it is lower (once the loss is reported, the mark
        follows the log as it now is)."""
        self._acked = seq
        self._write()

    def sync(self) -> None:
        """Flush the mark to disk if it moved since the last flush."""
        if self._acked != self._synced:
            os.fsync(self._fd)
            self._synced = self._acked

    def release(self) -> None:
        """Flush the mark and let go of the lock."""
        with contextlib.suppress(OSError):  # a full disk must not keep the lock held
            self.sync()
        os.close(self._fd)

    def _write(self) -> None:
        os.pwrite(self._fd, _RECORD.format(pid=os.getpid(), acked=self._acked).encode(), 0)
