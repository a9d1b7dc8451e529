"""Who may sign what in a simulated cluster: real Ed25519 keys, or a cheap authenticator.

The cheap authenticator is a keyed BLAKE2b MAC per member (16 bytes, about 1 us against
Ed25519's 20 + 53 us). It has the one property the protocol relies on: nobody produces
a tag under another member's secret, so a Byzantine replica that forges another's
message is caught exactly where a forged signature would be (`bad_signature`). Unlike a
signature every verifier holds every secret, which only a simulation can afford: every
run says which one it used.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.wire import Codec

MAC_BYTES = 16
AUTHENTICATORS = ("mac", "ed25519")


class MacSigner:
    """`crypto.Signer`'s interface over a keyed BLAKE2b MAC."""

    scheme = "sim-mac"  # not Ed25519: the wire's per-request MAC authenticators stay off

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, digest: bytes) -> bytes:
        return hashlib.blake2b(digest, key=self._secret, digest_size=MAC_BYTES).digest()


class MacVerifier:
    """`crypto.Verifier`'s interface over the same MAC."""

    signature_bytes = MAC_BYTES
    scheme = "sim-mac"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.raw_key = b"sim-mac:" + hashlib.blake2b(secret, digest_size=8).digest()

    def verify(self, signature: bytes, digest: bytes) -> bool:
        expected = hashlib.blake2b(digest, key=self._secret, digest_size=MAC_BYTES).digest()
        return hmac.compare_digest(signature, expected)


_ED25519: dict[object, object] = {}  # keys are slow to make in bulk: one per name per process


def _ed25519(name: object) -> object:
    if name not in _ED25519:
        _ED25519[name] = generate_key("ed25519")
    return _ED25519[name]


@dataclass
class Members:
    """Every member's signer and every member's verifier, for one cluster."""

    authenticator: str
    signers: dict[object, object]  # replica id or client id -> signer
    replica_verifiers: dict[int, object]
    client_verifiers: dict[str, object]

    def codec(self, member: int | str, max_frame: int) -> Codec:
        """A codec that signs as `member` and checks everyone."""
        return Codec(self.signers[member], self.replica_verifiers,  # type: ignore[arg-type]
                     self.client_verifiers, max_frame,  # type: ignore[arg-type]
                     me=member if isinstance(member, int) else None)

    def describe(self) -> str:
        if self.authenticator == "mac":
            return ("cheap authenticator: keyed BLAKE2b MACs (no member can forge another's; "
                    "not signatures)")
        return "real signatures: Ed25519 (libsodium)"


def make_members(n: int, clients: tuple[str, ...], authenticator: str = "mac",
                 seed: int = 0) -> Members:
    """Keys for replicas 0..n-1 and the named clients. MAC secrets derive from `seed`
    (a run is reproducible); Ed25519 keys are random and cached per process."""
    if authenticator not in AUTHENTICATORS:
        raise ValueError(f"authenticator {authenticator!r}: use one of {AUTHENTICATORS}")
    names: list[object] = [*range(n), *clients]
    signers: dict[object, object] = {}
    verifiers: dict[object, object] = {}
    for name in names:
        if authenticator == "mac":
            secret = hashlib.blake2b(f"{seed}/{name!r}".encode(), digest_size=32).digest()
            signers[name], verifiers[name] = MacSigner(secret), MacVerifier(secret)
        else:
            key = _ed25519(("r", name) if isinstance(name, int) else ("c", name))
            signers[name] = Signer(key)  # type: ignore[arg-type]
            verifiers[name] = Verifier(key.public_key())  # type: ignore[attr-defined]
    return Members(authenticator, signers,
                   {i: verifiers[i] for i in range(n)},  # type: ignore[misc]
                   {c: verifiers[c] for c in clients})  # type: ignore[misc]
