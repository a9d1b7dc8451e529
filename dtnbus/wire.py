"""The wire format: msgpack frames, signed by their sender, checked before use.

A frame is ``msgpack([payload, signature])`` where ``payload`` is
``msgpack([kind, *fields])`` and the signature covers ``sha256(payload)``; or, for the
two per-request messages only (a client's Request, a replica's Reply), PBFT's MAC
authenticator ``msgpack([payload, b"", tags])``: a 16-byte keyed-BLAKE2b tag over
``sha256(payload)`` for each replica in id order (a request), or one for the client (a
reply), with the pair's key (`crypto.MacKeys`). A tag convinces only its receiver, so
everything that must convince a third party (votes, checkpoints, view changes, the
certificates built from them) stays signed; a MAC-authenticated request is vouched for
to third parties by the commit certificate of its block: q replicas, f+1 of them correct,
each checked its own tag before it prepared. Decoding is
two steps so that no signature is checked for work nobody needs:

- `Codec.parse`: size, then shape and types against the message's schema (integers in
  range, digests of 32 bytes, bounded lists), then that the claimed sender is a member of
  the right kind; for nested proofs the same, but only when first looked at. Cheap.
- `Codec.authenticate`: the signatures, the frame's and every nested one's. The caller
  first asks the replica whether it wants the message and whether its proofs are of a
  sane shape and size (`Replica.admit`), so a bomb of proofs costs a parse, not 600,000
  signature checks.

Any failure raises `PeerError` with the drop reason; nothing malformed reaches the replica.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter

import msgpack

from dtnbus import admission
from dtnbus.crypto import MAC_BYTES, MacKeys, Signer, Verifier
from dtnbus.errors import PeerError
from dtnbus.fastinit import fast_init
from dtnbus.messages import (
    BOOL,
    BYTES,
    BYTES_LIST,
    CLIENT_KINDS,
    DIGEST,
    DIGEST_LIST,
    DIGEST_SIZE,
    FLOAT,
    INT,
    MESSAGE_TYPES,
    PHASE_LIST,
    STR,
    Message,
    Reply,
    Request,
    sender_of,
)

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MAX_LIST = 1_000_000
MAX_STR = 256
MAX_INT = 2**63 - 1
MAX_NESTING = 2  # NEW-VIEW > VIEW-CHANGE > proofs
MAX_NESTED = 200_000  # nested frames in one message, all levels together
OPEN_CACHE = 10_000  # verifiers of open-admission clients kept ready


@fast_init
@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, authenticated message, with what the node needs besides it."""

    msg: Message
    digest: bytes  # sha256 of the payload: a Request's identity
    frame: bytes  # the original signed bytes, to forward a client's request unchanged
    nested: tuple[Envelope, ...] = ()  # authenticated proofs inside a VIEW-CHANGE/NEW-VIEW
    tagged: bool = False  # a request authenticated by our MAC tag (not a signature)


# message class -> (its KIND, a getter of its field values in order): one C call per
# message instead of a getattr per field (a reply has eleven; one is sent per request)
_LAYOUT: dict[type, tuple[int, attrgetter]] = {}


def payload_of(msg: Message) -> bytes:
    layout = _LAYOUT.get(type(msg))
    if layout is None:
        names = [f.name for f in fields(msg)]
        getter = attrgetter(*names) if len(names) > 1 else \
            (lambda m, _g=attrgetter(names[0]): (_g(m),))
        layout = _LAYOUT[type(msg)] = (msg.KIND, getter)
    return _PACK([layout[0], *layout[1](msg)])


_PACK = msgpack.Packer(use_bin_type=True, autoreset=True).pack
TAGGED_PREFIX = b"\x93"  # a MAC-tagged request frame: msgpack [payload, b"", tags]


def is_tagged(frame: bytes) -> bool:
    """A request frame authenticated by a MAC vector (not a signature): [payload, b"",
    tags] where a signed frame is [payload, signature]."""
    return frame[:1] == TAGGED_PREFIX


BUNDLE_PREFIX = b"\x92\x00"  # msgpack [0, ...]: a frame starts [payload (bin), ...]
MAX_BUNDLE_PARTS = 4096


def bundle(frames: list[bytes]) -> bytes:
    """Several frames for one connection as one ZeroMQ frame, `[0, [frame, ...]]`: one
    send and one receive instead of one per part (here 1.5 + 1.2 us of CPU a part as the
    parts of a multipart message, 0.3 + 0.3 us packed; replies and request bundles are
    one frame per request and replica). Each frame inside is authenticated on its own."""
    return _PACK([0, frames])


def unbundle(frame: bytes) -> list[bytes]:
    """The frames of a bundle, or `[frame]` for any other frame. A bundle that does not
    decode comes back whole, for the decoder to drop and count as malformed."""
    if not frame.startswith(BUNDLE_PREFIX):
        return [frame]
    try:
        items = msgpack.unpackb(frame, raw=False, use_list=True, max_bin_len=len(frame),
                                max_str_len=0, max_array_len=MAX_BUNDLE_PARTS,
                                max_map_len=0)
    except Exception:  # msgpack raises a zoo of types on garbage
        return [frame]
    if type(items) is list and len(items) == 2 and type(parts := items[1]) is list:
        for part in parts:
            if type(part) is not bytes:
                return [frame]
        return parts
    return [frame]


def request_digest(msg: Message) -> bytes:
    """The digest a PRE-PREPARE uses to name a request (the same bytes the client signed)."""
    return hashlib.sha256(payload_of(msg)).digest()


class Codec:
    """Encodes and signs as one member; decodes and authenticates frames from the others.

    `clients` may change while the node runs (admission is ordered: the node adds and
    removes verifiers as it executes admission commands). With `open_clients`, a client
    id of the form "pk:<base64 Ed25519 key>" is its own verifier, unless the key is a
    replica's: a replica's key never signs a request the bus accepts as a client's."""

    def __init__(self, signer: Signer, replicas: dict[int, Verifier],
                 clients: dict[str, Verifier], max_frame: int = DEFAULT_MAX_FRAME,
                 open_clients: bool = False, me: int | None = None) -> None:
        """`me`: our replica id, when we are one (which tag of a request is ours)."""
        self.signer = signer
        self.replicas = replicas
        self.me = me
        self.macs = MacKeys(signer) if signer is not None and signer.scheme == "ed25519" \
            else None
        self._replica_order = [replicas[i].raw_key for i in sorted(replicas)]
        # MAC authenticators need Ed25519 keys all round
        self.can_mac = self.macs is not None and all(len(k) == 32 for k in self._replica_order)
        self.clients = clients
        self.max_frame = max_frame
        self.open_clients = open_clients
        self._replica_keys = {v.raw_key for v in replicas.values()}
        self._open_cache: OrderedDict[str, Verifier] = OrderedDict()

    def client_verifier(self, client: str) -> Verifier | None:
        """The verifier of a client: listed, or (open admission) named by its key."""
        verifier = self.clients.get(client)
        if verifier is not None or not self.open_clients:
            return verifier
        verifier = self._open_cache.get(client)
        if verifier is None:
            raw = admission.open_key(client)
            if raw is None or raw in self._replica_keys:
                return None
            verifier = Verifier.from_raw_ed25519(raw)
            self._open_cache[client] = verifier
            while len(self._open_cache) > OPEN_CACHE:
                self._open_cache.popitem(last=False)
        return verifier

    def encode(self, msg: Message) -> bytes:
        return self.encode_with_digest(msg)[0]

    def encode_with_digest(self, msg: Message) -> tuple[bytes, bytes]:
        return self._signed(payload_of(msg))

    def _signed(self, payload: bytes) -> tuple[bytes, bytes]:
        digest = hashlib.sha256(payload).digest()
        return _PACK([payload, self.signer.sign(digest)]), digest

    def encode_request(self, msg: Request, authenticate: str = "mac") -> tuple[bytes, bytes]:
        """A client's request, with a tag for every replica ("mac") or signed ("signature"):
        (frame, digest)."""
        if authenticate == "signature" or not self.can_mac:
            return self.encode_with_digest(msg)
        assert self.macs is not None
        payload = payload_of(msg)
        digest = hashlib.sha256(payload).digest()
        tags = b"".join([self.macs.tag(k, digest) for k in self._replica_order])
        return _PACK([payload, b"", tags]), digest

    def signed_request(self, frame: bytes) -> bytes:
        """The same request signed instead of MAC-tagged (same payload, same digest): what
        a client sends again when a replica may have stopped trusting its tags."""
        return self._signed(msgpack.unpackb(frame)[0])[0]

    def encode_reply(self, msg: Reply, client_key: bytes | None) -> bytes:
        """A reply, with a tag for its client when both ends have Ed25519 keys (a client
        checks it in half a microsecond), else signed."""
        if self.macs is None or client_key is None or len(client_key) != 32:
            return self.encode(msg)
        payload = payload_of(msg)
        tag = self.macs.tag(client_key, hashlib.sha256(payload).digest())
        return _PACK([payload, b"", tag])

    def decode(self, frame: bytes) -> Envelope:
        """Parse and authenticate one frame (nested proofs included)."""
        return self.authenticate(self.parse(frame))

    def parse(self, frame: bytes, depth: int = 0) -> Unverified:
        """Size, shape, types and membership: everything but the signatures, which cost
        ~20x more; the caller may skip them for a message it will not use. Nested proofs
        are parsed when first looked at (`Unverified.nested`)."""
        if len(frame) > self.max_frame:
            raise PeerError("oversized", f"{len(frame)} bytes > {self.max_frame}")
        try:
            outer = msgpack.unpackb(frame, raw=False, use_list=True, max_bin_len=self.max_frame,
                                    max_str_len=MAX_STR, max_array_len=3, max_map_len=0)
        except Exception as exc:  # msgpack raises a zoo of types on garbage
            raise PeerError("malformed", f"frame: {type(exc).__name__}") from None
        if not (isinstance(outer, list) and len(outer) in (2, 3)
                and all(isinstance(part, bytes) for part in outer)):
            raise PeerError("malformed", "frame is not [payload, signature]")
        payload, signature = outer[0], outer[1]
        tags = outer[2] if len(outer) == 3 else b""
        if len(outer) == 3 and (signature or not tags or len(tags) % MAC_BYTES):
            raise PeerError("malformed", "frame is not [payload, b'', tags]")
        msg = _parse_payload(payload, self.max_frame)
        if tags and not isinstance(msg, Request | Reply):
            raise PeerError("malformed", f"{type(msg).__name__} must be signed")
        sender = sender_of(msg)
        if msg.KIND in CLIENT_KINDS:
            verifier = self.client_verifier(sender) if isinstance(sender, str) else None
        else:
            verifier = self.replicas.get(sender) if isinstance(sender, int) else None
        if verifier is None:  # (the message rides along: a client may be told why)
            raise PeerError("unknown_sender", f"{type(msg).__name__} from {sender!r}", msg,
                            hashlib.sha256(payload).digest())
        return Unverified(msg, payload, signature, verifier, frame, self, depth, tags)

    def parse_nested(self, raw: Unverified) -> tuple[Unverified, ...]:
        """The nested proofs of a parsed message, parsed the same way (not verified).
        Called lazily (`Unverified.nested`): a message the replica refuses on its outer
        fields costs no parsing of its proofs at all."""
        nested_field = _NESTED_FIELD.get(type(raw.msg))
        if nested_field is None:  # most messages (a failed getattr costs ~1 us a frame)
            return ()
        parts = getattr(raw.msg, nested_field)
        if not parts:
            return ()
        if raw.depth >= MAX_NESTING:
            raise PeerError("malformed", f"{type(raw.msg).__name__} nested too deep")
        if len(parts) > MAX_NESTED:
            raise PeerError("malformed", "too many nested proofs")
        if len(set(parts)) != len(parts):
            raise PeerError("malformed", f"{type(raw.msg).__name__} repeats a proof")
        nested = tuple(self.parse(part, raw.depth + 1) for part in parts)
        if any(inner.msg.KIND in CLIENT_KINDS for inner in nested):
            raise PeerError("malformed", "a client message cannot be a proof")
        if raw.depth == 0 and sum(len(n.nested) for n in nested) + len(nested) > MAX_NESTED:
            raise PeerError("malformed", "too many nested proofs")
        return nested

    def authenticate(self, raw: Unverified, nested: bool = True) -> Envelope:
        """Check the signature (or our tag of a MAC authenticator) and, with `nested`, every
        nested proof's signature; raise PeerError if any fails. Without `nested`, the
        sender is known to be who it claims before its proofs cost anything
        (`authenticate_nested` finishes the job)."""
        msg = raw.msg
        digest = hashlib.sha256(raw.payload).digest()
        if raw.tags:
            if not self._tag_holds(raw, digest):
                detail = f"{type(msg).__name__} from {sender_of(msg)!r}: bad MAC"
                if isinstance(msg, Request):
                    raise UnvouchedRequest(Envelope(msg, digest, raw.frame, (), True), detail)
                raise PeerError("bad_signature", detail)
            return Envelope(msg, digest, raw.frame, (), True)  # (requests carry no proofs)
        elif not raw.verifier.verify(raw.signature, digest):
            raise PeerError("bad_signature", f"{type(msg).__name__} from {sender_of(msg)!r}")
        if not nested:
            return Envelope(msg, digest, raw.frame)
        return self.authenticate_nested(raw, Envelope(msg, digest, raw.frame))

    def authenticate_nested(self, raw: Unverified, outer: Envelope) -> Envelope:
        """The nested proofs' signatures of a message whose own signature held."""
        if type(raw.msg) not in _NESTED_FIELD or not raw.nested:  # (the usual: none)
            return outer
        # a bad proof makes the whole message bad
        return Envelope(outer.msg, outer.digest, outer.frame,
                        tuple(self.authenticate(n) for n in raw.nested))

    def _tag_holds(self, raw: Unverified, digest: bytes) -> bool:
        if self.macs is None or len(raw.verifier.raw_key) != 32:
            return False
        if isinstance(raw.msg, Request):  # one tag per replica: ours is at our id
            if self.me is None or len(raw.tags) != MAC_BYTES * len(self._replica_order):
                return False
            tag = raw.tags[self.me * MAC_BYTES:(self.me + 1) * MAC_BYTES]
        else:
            tag = raw.tags
        return hmac.compare_digest(tag, self.macs.tag(raw.verifier.raw_key, digest))


class UnvouchedRequest(PeerError):
    """A client's request whose MAC tag for us fails: dropped and counted like any bad
    signature, yet the replica may take it for a batch f + 1 others vouch for
    (`Replica.unvouched`): a faulty client can make its tags hold at some replicas only."""

    def __init__(self, envelope: Envelope, detail: str) -> None:
        super().__init__("bad_signature", detail, envelope.msg, envelope.digest)
        self.envelope = envelope


class Unverified:
    """A well-formed frame from a known member whose signature is not checked yet. Its
    nested proofs are parsed on first access to `nested` (PeerError if they are bad)."""

    __slots__ = ("_codec", "_nested", "depth", "frame", "msg", "payload", "signature", "tags",
                 "verifier")

    def __init__(self, msg: Message, payload: bytes, signature: bytes, verifier: Verifier,
                 frame: bytes, codec: Codec, depth: int = 0, tags: bytes = b"") -> None:
        self.msg = msg
        self.tags = tags
        self.payload = payload
        self.signature = signature
        self.verifier = verifier
        self.frame = frame
        self.depth = depth
        self._codec = codec
        self._nested: tuple[Unverified, ...] | None = None

    @property
    def nested(self) -> tuple[Unverified, ...]:
        if self._nested is None:
            self._nested = self._codec.parse_nested(self)
        return self._nested


def _parse_payload(payload: bytes, max_frame: int) -> Message:
    try:
        items = msgpack.unpackb(payload, raw=False, use_list=True, max_bin_len=max_frame,
                                max_str_len=MAX_STR, max_array_len=MAX_LIST, max_map_len=0)
    except Exception as exc:
        raise PeerError("malformed", f"payload: {type(exc).__name__}") from None
    if not isinstance(items, list) or not items or type(items[0]) is not int:
        raise PeerError("malformed", "payload is not [kind, ...]")
    cls = MESSAGE_TYPES.get(items[0])
    if cls is None:
        raise PeerError("malformed", f"unknown kind {items[0]}")
    build = _BUILDERS.get(cls)
    if build is None:
        build = _BUILDERS[cls] = _builder(cls)
    return build(items)


_BUILDERS: dict[type, Callable[[list], Message]] = {}
# message class -> the field that holds its nested proofs (VIEW-CHANGE, NEW-VIEW, state)
_NESTED_FIELD: dict[type, str] = {cls: cls.NESTED for cls in MESSAGE_TYPES.values()
                                  if hasattr(cls, "NESTED")}
# the checks of the simple field types, inlined into each message's builder
_INLINE = {
    INT: "type({v}) is int and 0 <= {v} <= MAX_INT",
    STR: "type({v}) is str and 0 < len({v}) <= MAX_STR",
    BYTES: "type({v}) is bytes",
    DIGEST: "type({v}) is bytes and len({v}) == DIGEST_SIZE",
    BOOL: "type({v}) is bool",
}


def _builder(cls: type) -> Callable[[list], Message]:
    """One function per message class that checks [kind, *fields] against its schema in
    straight-line code and builds the message (a loop over per-field checks cost ~1 us
    more per frame). The first field that fails is named, as before."""
    schema = cls.SCHEMA  # type: ignore[attr-defined]
    args = ", ".join(f"a{i}" for i in range(len(schema)))
    lines = ["def build(items):",
             f"    if len(items) != {len(schema) + 1}:",
             f"        raise PeerError('malformed', '{cls.__name__} has %d fields' "
             f"% (len(items) - 1))",
             f"    _kind, {args}{',' if len(schema) == 1 else ''} = items"]
    env: dict[str, object] = {"PeerError": PeerError, "MAX_INT": MAX_INT, "MAX_STR": MAX_STR,
                              "DIGEST_SIZE": DIGEST_SIZE, "cls": cls}
    for i, (name, tag) in enumerate(schema):
        fail = f"raise PeerError('malformed', '{cls.__name__}.{name} is not {tag}')"
        if tag in _INLINE:
            lines.append(f"    if not ({_INLINE[tag].format(v=f'a{i}')}):")
        else:
            env[f"check{i}"] = _CHECKS[tag]
            lines += [f"    a{i} = check{i}(a{i})", f"    if a{i} is None:"]
        lines.append(f"        {fail}")
    lines.append(f"    return cls({args})")
    exec("\n".join(lines), env)  # built from our own schemas only
    return env["build"]  # type: ignore[return-value]


def _int(v: object) -> int | None:
    return v if type(v) is int and 0 <= v <= MAX_INT else None


def _str(v: object) -> str | None:
    return v if type(v) is str and 0 < len(v) <= MAX_STR else None


def _bytes(v: object) -> bytes | None:
    return v if type(v) is bytes else None


def _digest(v: object) -> bytes | None:
    return v if type(v) is bytes and len(v) == DIGEST_SIZE else None


def _bool(v: object) -> bool | None:
    return v if type(v) is bool else None


def _float(v: object) -> float | None:
    if type(v) is int:
        v = float(v)
    return v if type(v) is float and math.isfinite(v) else None


def _bytes_list(v: object) -> tuple[bytes, ...] | None:
    if type(v) is not list:
        return None
    for x in v:  # a plain loop: no generator object for the usual one-element list
        if type(x) is not bytes:
            return None
    return tuple(v)


def _digest_list(v: object) -> tuple[bytes, ...] | None:
    if type(v) is not list:
        return None
    for x in v:
        if type(x) is not bytes or len(x) != DIGEST_SIZE:
            return None
    return tuple(v)


def _phase_list(v: object) -> tuple[tuple[str, int, float], ...] | None:
    if type(v) is not list:
        return None
    out = []
    for row in v:
        if not (type(row) is list and len(row) == 3):
            return None
        name, count, total = _str(row[0]), _int(row[1]), _float(row[2])
        if name is None or count is None or total is None:
            return None
        out.append((name, count, total))
    return tuple(out)


_CHECKS = {INT: _int, STR: _str, BYTES: _bytes, BOOL: _bool, FLOAT: _float, DIGEST: _digest,
           BYTES_LIST: _bytes_list, DIGEST_LIST: _digest_list, PHASE_LIST: _phase_list}


def parse_request_frame(frame: bytes) -> tuple[Request, bytes]:
    """A client's request frame as stored in a ledger: its message and digest. The
    signature is not checked here: a certified block hash vouches for the digest."""
    try:
        payload = msgpack.unpackb(frame, raw=False, use_list=True,
                                  max_bin_len=DEFAULT_MAX_FRAME)[0]
    except Exception:
        raise PeerError("malformed", "request frame is not [payload, signature]") from None
    if type(payload) is not bytes:
        raise PeerError("malformed", "request frame is not [payload, signature]")
    msg = _parse_payload(payload, DEFAULT_MAX_FRAME)
    if not isinstance(msg, Request):
        raise PeerError("malformed", "frame is not a request")
    return msg, hashlib.sha256(payload).digest()
