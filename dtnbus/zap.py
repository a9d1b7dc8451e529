"""The ZAP handler of one node (RFC 27) and the record of every refused connection.

libzmq asks the handler, over inproc://zeromq.zap.01, whether a CURVE client key may
finish its handshake on one of our server sockets, and stamps the user id we answer on
every frame from that connection. Keys come from the cluster file (curve.py); the PUB's
domain admits nodes only, the ROUTER's nodes and clients.

It runs on its own thread, blocked in zmq_poll (no GIL held) except while it answers
a handshake: a node's Poller loop stays single-threaded and a handshake never waits for
a busy loop. It is not pyzmq's ThreadAuthenticator, which does the same job on an
asyncio loop in its thread: that one answers a per-domain callback yes/no, so the
member name and the reason of a refusal would need overriding its private methods, and
it never sees the refusals that do not reach ZAP at all. (Measured, docs/security.md:
their handshakes and set-up cost the same to within noise.) This thread also watches
the server sockets' monitors, where libzmq reports a peer that speaks no CURVE
(mechanism mismatch), fails the cryptographic handshake (it does not hold the secret
key of the public key it presents, or expects another server key), or hangs up
mid-handshake (a plain peer often does, having seen our greeting first).

Every refusal is counted by reason (`dtnbus_curve_refused_total{reason}`) and logged as
a WARNING at most once per reason every LOG_EVERY seconds, with how many were not shown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from itertools import count

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from dtnbus.curve import DOMAIN_MEMBERS, DOMAIN_REPLICAS, NODE_PREFIX, CurveEnd

log = logging.getLogger("dtnbus.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
LOG_EVERY = 10.0
MONITORED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_ids = count()


class RateLimitedWarnings:
    """At most one WARNING per reason every `every` seconds; the next one says how many
    were held back. A peer retrying a bad handshake every 100 ms must not flood the log."""

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, reason: str, detail: str) -> bool:
        """Log (True) or hold back (False) one refusal."""
        now = self.clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.every:
                self._held[reason] = self._held.get(reason, 0) + 1
                return False
            self._last[reason] = now
            held = self._held.pop(reason, 0)
        more = f" ({held} more since the last such warning)" if held else ""
        log.warning("refused connection (%s): %s%s", reason, detail, more)
        return True


class ZapGuard:
    """Answers ZAP requests for one zmq.Context and counts what it (and libzmq) refused."""

    def __init__(self, ctx: zmq.Context, end: CurveEnd,
                 on_refusal: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.admitted = dict(end.admitted)
        self.on_refusal = on_refusal
        self.warnings = RateLimitedWarnings()
        self._monitors: list[tuple[str, str]] = []  # (inproc address, socket name)
        self._control = f"inproc://dtnbus-zap-control-{id(self)}-{next(_ids)}"
        self._pipe: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Report this server socket's failed handshakes (call before start and bind)."""
        address = f"inproc://dtnbus-zap-monitor-{id(self)}-{next(_ids)}"
        sock.monitor(address, MONITORED)
        self._monitors.append((address, name))

    def start(self) -> None:
        """Bind the ZAP endpoint and connect the monitors, on the thread, then return:
        from here on no handshake can slip past an absent handler or unwatched."""
        self._pipe = self.ctx.socket(zmq.PAIR)
        self._pipe.setsockopt(zmq.LINGER, 0)
        self._pipe.bind(self._control)
        self._thread = threading.Thread(target=self._run, name="dtnbus-zap", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise RuntimeError(f"ZAP handler did not start: {self._error}")

    def stop(self) -> None:
        if self._pipe is None:
            return
        if self._thread is not None and self._thread.is_alive():
            self._pipe.send(b"stop")
            self._thread.join(10.0)
        self._pipe.close(linger=0)
        self._pipe = None

    def refused(self, reason: str, detail: str) -> None:
        """Count and (rate-limited) log one refusal; the transport and node report theirs
        here too, so every refusal of the CURVE layer is in one metric and one log."""
        if self.on_refusal is not None:
            self.on_refusal(reason)
        self.warnings.warn(reason, detail)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        sockets: list[zmq.Socket] = []
        try:
            zap = self.ctx.socket(zmq.REP)
            sockets.append(zap)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
            pipe = self.ctx.socket(zmq.PAIR)
            sockets.append(pipe)
            pipe.setsockopt(zmq.LINGER, 0)
            pipe.connect(self._control)
            poller = zmq.Poller()
            poller.register(zap, zmq.POLLIN)
            poller.register(pipe, zmq.POLLIN)
            monitors: dict[zmq.Socket, str] = {}
            for address, name in self._monitors:
                mon = self.ctx.socket(zmq.PAIR)
                sockets.append(mon)
                mon.setsockopt(zmq.LINGER, 0)
                mon.connect(address)
                poller.register(mon, zmq.POLLIN)
                monitors[mon] = name
        except zmq.ZMQError as exc:
            self._error = exc
            for sock in sockets:
                sock.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                ready = dict(poller.poll())
                if pipe in ready:
                    return
                if zap in ready:
                    zap.send_multipart(self.answer(zap.recv_multipart()))
                for mon, name in monitors.items():
                    if mon in ready:
                        self._on_monitor_event(mon, name)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                zap.unbind(ZAP_ENDPOINT)  # at once: close() frees the name asynchronously
            for sock in sockets:
                sock.close(linger=0)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """One ZAP reply: [version, request id, status, text, user id, metadata]."""
        if len(request) < 6:
            self.refused("bad_handshake", "malformed ZAP request")
            rid = request[1] if len(request) > 1 else b""
            return [ZAP_VERSION, rid, b"400", b"malformed ZAP request", b"", b""]
        version, rid, domain, address, _identity, mechanism, *credentials = request
        peer = address.decode("ascii", "replace")

        def refuse(reason: str, text: str, detail: str) -> list[bytes]:
            self.refused(reason, f"{detail} from {peer} on {domain.decode('ascii', 'replace')}")
            return [ZAP_VERSION, rid, b"400", text.encode(), b"", b""]

        if version != ZAP_VERSION:
            return refuse("bad_handshake", "unsupported ZAP version", "unsupported ZAP version")
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return refuse("no_curve", "CURVE required",
                          f"{mechanism.decode('ascii', 'replace')} handshake")
        key = z85.encode(credentials[0])
        member = self.admitted.get(key)
        if member is None:
            return refuse("unknown_key", "unknown key",
                          f"CURVE key {key.decode()} not in the cluster file")
        if domain == DOMAIN_REPLICAS.encode() and not member.startswith(NODE_PREFIX):
            return refuse("not_a_replica", "replicas only", f"{member} tried to subscribe")
        if domain not in (DOMAIN_REPLICAS.encode(), DOMAIN_MEMBERS.encode()):
            return refuse("bad_handshake", "unknown domain", f"{member}: unknown ZAP domain")
        return [ZAP_VERSION, rid, b"200", b"OK", member.encode(), b""]

    def _on_monitor_event(self, mon: zmq.Socket, name: str) -> None:
        while True:
            try:
                event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            peer = f"a peer of our {name} ({event.get('endpoint', b'').decode('ascii', 'replace')})"
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # it hung up mid-handshake: typically a plain peer that saw our CURVE
                # greeting first, or one that expects another server key
                self.refused("handshake_aborted", f"{peer} hung up during the handshake "
                                                  f"(errno {event['value']})")
            elif event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self.refused("no_curve", f"{peer} speaks no CURVE")
            else:
                self.refused("bad_handshake", f"{peer} failed the CURVE handshake "
                                              f"(error {event['value']:#x})")
