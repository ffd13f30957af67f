"""A TCP connection, TLS optional, whose sends and receives are timed by the kernel.

Linux stamps packets in the network stack when a socket asks for it (``SO_TIMESTAMPING``, the
kernel's Documentation/networking/timestamping.rst):

- receive: each ``recvmsg`` carries the software receive time of the newest segment it returns
  (``SOF_TIMESTAMPING_RX_SOFTWARE``): when the bytes reached this host, however late this
  process was scheduled to read them;
- send: when the last byte of a ``send`` left for the device (``SOF_TIMESTAMPING_TX_SOFTWARE``,
  or ``TX_SCHED``, its entry to the packet scheduler, where the driver does not stamp), read
  back from the socket's error queue and matched by the byte's position (``OPT_ID``).

Both are CLOCK_REALTIME nanoseconds. A `Stamp` keeps the kernel's time (None where it gave
none: another OS, a 32-bit or unusual architecture, a driver that does not stamp) beside
`time.time_ns` read when this process handled the bytes, so both clocks can be compared.

TLS runs over memory BIOs (`ssl.SSLObject`): the socket stays a plain one whose raw segments are
read with ``recvmsg``, and decrypted bytes carry the stamp of the read that completed them. The
handshake happens in `Connection.open`, never inside a request's timing.

Reads are blocking system calls: the kernel hands the bytes over as soon as the reading thread
runs again, before it waits for Python's GIL. Limit: TCP merges segments that wait unread in
the receive queue, and the merged data keeps the newest arrival time; so a chunk whose thread
could not run before the next chunk arrived (an overloaded host) is stamped with that next
arrival.
"""

from __future__ import annotations

import platform
import select
import socket
import ssl
import struct
import sys
import time
from typing import NamedTuple

SO_TIMESTAMPING = 37  # = SCM_TIMESTAMPING; the asm-generic value (x86_64, arm64, riscv, ...)
_TX_SOFTWARE, _RX_SOFTWARE, _SOFTWARE = 1 << 1, 1 << 3, 1 << 4
_OPT_ID, _TX_SCHED, _OPT_TSONLY = 1 << 7, 1 << 8, 1 << 11
FLAGS = _TX_SOFTWARE | _RX_SOFTWARE | _SOFTWARE | _OPT_ID | _TX_SCHED | _OPT_TSONLY
_TSTAMP_SND, _TSTAMP_SCHED = 0, 1  # sock_extended_err.ee_info of a send stamp
_ORIGIN_TIMESTAMPING = 4  # SO_EE_ORIGIN_TIMESTAMPING
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP_RECVERR, IPV6_RECVERR
_EXT_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_TIMESPEC = struct.Struct("=qq")
_TIMEVAL = struct.Struct("=qq")  # struct timeval on 64-bit Linux
_ANC = 512
READ_BYTES = 1 << 16
LIMIT_SLACK_S = 0.05  # a receive may end this much past its deadline
# Arches whose SO_TIMESTAMPING is 37 with a 64-bit timespec (the "_OLD" option then is the new).
_ARCHES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"})


def kernel_stamps_possible() -> bool:
    """True where this module knows how to ask the kernel for timestamps (64-bit Linux)."""
    return sys.platform == "linux" and platform.machine().lower() in _ARCHES


class Stamp(NamedTuple):
    """When bytes went out or came in: the kernel's time (None if it gave none) and this
    process's `time.time_ns` when it handled them; both CLOCK_REALTIME nanoseconds."""

    kernel: int | None
    user: int

    def best(self) -> int:
        """The kernel's time where there is one, else the process's."""
        return self.user if self.kernel is None else self.kernel


def clock_name(stamps: list[Stamp]) -> str:
    """``kernel`` if every stamp has the kernel's time, ``user`` if none has, else ``mixed``."""
    have = {s.kernel is not None for s in stamps}
    return "mixed" if len(have) > 1 else "kernel" if have == {True} else "user"


class Connection:
    """One open TCP connection (TLS over memory BIOs when `tls` is given). Sends and receives
    are blocking system calls, each bounded by the caller's deadline (`time.monotonic` seconds)
    through the kernel's socket timeouts.

    Errors: TimeoutError past a deadline; OSError (ConnectionError, ...) and ssl.SSLError from
    the network, as the socket raises them.
    """

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None,
                 incoming: ssl.MemoryBIO | None, outgoing: ssl.MemoryBIO | None,
                 kernel: bool) -> None:
        self.sock, self._tls, self._in, self._out = sock, tls, incoming, outgoing
        self.kernel = kernel  # the kernel stamps this socket
        self.sent_bytes = 0  # raw bytes written since stamping was enabled (OPT_ID's counter)
        self._tx: dict[int, tuple[int, int]] = {}  # last byte's id -> (ee_info, ns)
        self._last = Stamp(None, time.time_ns())  # the read that brought the TLS bytes
        self.closed = False
        self._rcv_limit = -1.0  # the receive timeout set on the socket, in seconds

    @classmethod
    def open(cls, host: str, port: int, deadline: float, *, tls: ssl.SSLContext | None = None,
             stamps: bool = True) -> Connection:
        """Connect (and handshake TLS) before `deadline`; `stamps` asks the kernel for times."""
        left = max(deadline - time.monotonic(), 0.001)
        sock = socket.create_connection((host, port), timeout=left)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kernel = False
            if stamps and kernel_stamps_possible():
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS)
                    kernel = True
                except OSError:
                    kernel = False
            sock.settimeout(None)  # blocking calls, bounded by the kernel's timeouts (`_limit`)
            if tls is None:
                return cls(sock, None, None, None, kernel)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = tls.wrap_bio(incoming, outgoing, server_hostname=host)
            conn = cls(sock, obj, incoming, outgoing, kernel)
            conn._handshake(deadline)
            return conn
        except BaseException:
            sock.close()
            raise

    def _handshake(self, deadline: float) -> None:
        assert self._tls is not None and self._in is not None
        while True:
            try:
                self._tls.do_handshake()
                self._flush(deadline)
                return
            except ssl.SSLWantReadError:
                self._flush(deadline)
                data, _ = self._recv_raw(deadline)
                if not data:
                    raise ConnectionResetError("the server closed the connection during the "
                                               "TLS handshake") from None
                self._in.write(data)

    def send(self, data: bytes, deadline: float) -> int:
        """Hand all of `data` to the kernel; returns the id of its last byte (`sent_stamp`)."""
        if self._tls is None:
            self._send_raw(data, deadline)
        else:
            self._tls.write(data)
            self._flush(deadline)
        return (self.sent_bytes - 1) & 0xFFFFFFFF

    def sent_stamp(self, byte_id: int) -> int | None:
        """The kernel's send time of the byte `byte_id` (`send`'s answer), if it has said yet."""
        self._drain_errors()
        found = self._tx.get(byte_id)
        return None if found is None else found[1]

    def recv(self, deadline: float) -> tuple[bytes, Stamp]:
        """The next bytes of the stream (plaintext) and when they came; b"" at its end."""
        if self._tls is None:
            return self._recv_raw(deadline)
        assert self._in is not None
        while True:
            try:
                return self._tls.read(READ_BYTES), self._last
            except ssl.SSLWantReadError:
                self._flush(deadline)  # a TLS 1.3 key update may want an answer
                data, stamp = self._recv_raw(deadline)
                if not data:
                    self._in.write_eof()
                else:
                    self._in.write(data)
                    self._last = stamp
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"", self._last

    def idle_ok(self) -> bool:
        """True if the idle connection looks usable: nothing to read (a closed or talking
        connection is not reusable), no error pending beyond send stamps."""
        if self.closed:
            return False
        self._drain_errors()
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not any(revents & (select.POLLIN | select.POLLHUP | select.POLLERR)
                       for _, revents in poller.poll(0))

    def close(self) -> None:
        """Close the socket (no TLS close_notify: the connection is being dropped)."""
        if not self.closed:
            self.closed = True
            self.sock.close()

    def _flush(self, deadline: float) -> None:
        assert self._out is not None
        if pending := self._out.read():
            self._send_raw(pending, deadline)

    def _send_raw(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._limit(socket.SO_SNDTIMEO, deadline)
            try:
                n = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                continue  # the kernel's timeout ran out (or a signal came): look at the deadline
            self.sent_bytes += n
            view = view[n:]

    def _recv_raw(self, deadline: float) -> tuple[bytes, Stamp]:
        while True:
            self._limit(socket.SO_RCVTIMEO, deadline)
            try:
                # A blocking read: the kernel hands the bytes over the moment this thread runs
                # again, without waiting for the GIL, so they are taken before later segments
                # can join them (and share the later stamp).
                data, anc, _, _ = self.sock.recvmsg(READ_BYTES, _ANC)
            except (BlockingIOError, InterruptedError):
                continue
            user = time.time_ns()
            kernel = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    sec, nsec = _TIMESPEC.unpack_from(payload, 0)
                    kernel = sec * 1_000_000_000 + nsec if sec or nsec else None
            return data, Stamp(kernel, user)

    def _limit(self, option: int, deadline: float) -> None:
        """Bound the next blocking send or receive by `deadline` (the kernel's own timeout,
        SO_SNDTIMEO or SO_RCVTIMEO); TimeoutError once it has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        if option == socket.SO_RCVTIMEO and 0 <= self._rcv_limit - left <= LIMIT_SLACK_S:
            return  # set already, overshooting the deadline by little: a syscall saved
        sec = int(left)
        usec = max(int((left - sec) * 1e6), 1 if sec == 0 else 0)
        self.sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(sec, usec))
        if option == socket.SO_RCVTIMEO:
            self._rcv_limit = left

    def _drain_errors(self) -> int:
        """Read the error queue's send stamps into `_tx`; how many it held."""
        if not self.kernel:
            return 0
        count = 0
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(1, _ANC, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                return count
            count += 1
            ns, ext = None, None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    sec, nsec = _TIMESPEC.unpack_from(payload, 0)
                    ns = sec * 1_000_000_000 + nsec
                elif (level, kind) in _RECVERR:
                    ext = _EXT_ERR.unpack_from(payload, 0)
            if ext is None or ext[1] != _ORIGIN_TIMESTAMPING or not ns:
                continue
            kind_of, key = ext[5], ext[6]
            old = self._tx.get(key)
            # prefer the device's stamp (SND) over the scheduler's where both come
            if old is None or (kind_of == _TSTAMP_SND and old[0] != _TSTAMP_SND):
                self._tx[key] = (kind_of, ns)
            if len(self._tx) > 64:  # only the latest request's matter
                for k in list(self._tx)[:-16]:
                    del self._tx[k]
