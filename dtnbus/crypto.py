"""Key pairs, signing and verification: Ed25519 (default) or RSA-2048 (PSS).

We sign the SHA-256 digest of a message's payload, not the payload: a 150 kB
request would otherwise cost far more to sign, and the digest is computed anyway.
Private keys are written with mode 0600 and are never printed.

Ed25519 signs and verifies through libsodium (PyNaCl) when it is installed: on this
machine it verifies in 53 us against OpenSSL's 101 us (machine-limits.md), and
verification is what a PBFT node spends its CPU on. The signatures are the same
bytes either way (Ed25519 is deterministic); key files stay in PKCS#8 PEM.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from dtnbus.errors import LocalError

try:  # libsodium: about twice as fast as OpenSSL for Ed25519 here
    import nacl.exceptions
    import nacl.public
    import nacl.signing
except ImportError:  # pragma: no cover - PyNaCl is a pinned dependency
    nacl = None  # type: ignore[assignment]

SCHEMES = ("ed25519", "rsa2048")
SIGNATURE_BYTES = {"ed25519": 64, "rsa2048": 256}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_PREHASHED = utils.Prehashed(hashes.SHA256())

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise LocalError(f"unknown signature scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    return scheme


def generate_key(scheme: str = "ed25519") -> PrivateKey:
    if check_scheme(scheme) == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def scheme_of(key: PrivateKey | PublicKey) -> str:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) \
        else "rsa2048"


class Signer:
    """Signs 32-byte digests with one private key."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        self.scheme = scheme_of(key)
        self._sodium = None
        if nacl is not None and self.scheme == "ed25519":
            seed = key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            self._sodium = nacl.signing.SigningKey(seed)

    def sign(self, digest: bytes) -> bytes:
        if self._sodium is not None:
            return self._sodium.sign(digest).signature
        if self.scheme == "ed25519":
            return self._key.sign(digest)  # type: ignore[call-arg]
        return self._key.sign(digest, _PSS, _PREHASHED)  # type: ignore[call-arg]

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key()


MAC_BYTES = 16  # keyed BLAKE2b, truncated: 128-bit tags, as PBFT's authenticators


def mac(key: bytes, digest: bytes) -> bytes:
    """The tag one member computes for another over a message digest (about 0.6 us)."""
    return hashlib.blake2b(digest, key=key, digest_size=MAC_BYTES).digest()


class MacKeys:
    """Pairwise MAC keys of one member, agreed without a handshake: both ends convert their
    Ed25519 keys to X25519, and the Diffie-Hellman secret of the pair (libsodium's
    crypto_box_beforenm) keyed-hashed with both public keys is the pair's key. A tag made
    with it convinces only the other member of the pair, which is what a request needs
    towards each replica and a reply towards its client (PBFT's MAC authenticators);
    what must convince third parties stays signed. Ed25519 only."""

    def __init__(self, signer: Signer) -> None:
        if signer._sodium is None:
            raise LocalError("MAC authenticators need Ed25519 keys (and PyNaCl)")
        self._me = signer._sodium.verify_key.encode()
        self._secret = signer._sodium.to_curve25519_private_key()
        self._keys: dict[bytes, bytes] = {}
        self._states: dict[bytes, Any] = {}  # peer -> keyed BLAKE2b state (`tag`)

    def key_for(self, peer_raw_ed25519: bytes) -> bytes:
        key = self._keys.get(peer_raw_ed25519)
        if key is None:
            peer = nacl.signing.VerifyKey(peer_raw_ed25519).to_curve25519_public_key()
            shared = nacl.public.Box(self._secret, peer).shared_key()
            a, b = sorted((self._me, peer_raw_ed25519))
            key = hashlib.blake2b(a + b, key=shared, digest_size=32,
                                  person=b"dtnbus-mac-v1").digest()
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[peer_raw_ed25519] = key
        return key

    def tag(self, peer_raw_ed25519: bytes, digest: bytes) -> bytes:
        """`mac(key_for(peer), digest)`, from a keyed hash state kept per peer (copying
        it costs a third less than keying a new one; a node makes two per request)."""
        state = self._states.get(peer_raw_ed25519)
        if state is None:
            state = hashlib.blake2b(key=self.key_for(peer_raw_ed25519), digest_size=MAC_BYTES)
            if len(self._states) > 100_000:
                self._states.clear()
            self._states[peer_raw_ed25519] = state
        h = state.copy()
        h.update(digest)
        return h.digest()


class Verifier:
    """Checks signatures of one member against its public key."""

    def __init__(self, key: PublicKey) -> None:
        self._key = key
        self.scheme = scheme_of(key)
        self.signature_bytes = SIGNATURE_BYTES[self.scheme]
        self._sodium = None
        if self.scheme == "ed25519":
            self.raw_key = key.public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        else:
            self.raw_key = key.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        if nacl is not None and self.scheme == "ed25519":
            self._sodium = nacl.signing.VerifyKey(self.raw_key)

    @classmethod
    def from_raw_ed25519(cls, raw: bytes) -> Verifier:
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))

    def verify(self, signature: bytes, digest: bytes) -> bool:
        if len(signature) != self.signature_bytes:
            return False
        if self._sodium is not None:
            try:
                self._sodium.verify(digest, signature)
            except nacl.exceptions.BadSignatureError:
                return False
            return True
        try:
            if self.scheme == "ed25519":
                self._key.verify(signature, digest)  # type: ignore[call-arg]
            else:
                self._key.verify(signature, digest, _PSS, _PREHASHED)  # type: ignore[call-arg]
        except InvalidSignature:
            return False
        return True


def public_key_text(key: PublicKey) -> str:
    """A public key as one line for the cluster file: base64 of DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def load_public_key_text(text: str) -> PublicKey:
    try:
        key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise LocalError(f"invalid public key in cluster file: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise LocalError("cluster file holds a public key that is neither Ed25519 nor RSA")
    return key


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write a PEM private key that only its owner can read (created 0600, never chmod'ed later)."""
    write_secret_file(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a file only its owner can read: created 0600 (O_EXCL), never chmod'ed later,
    so there is no moment at which it is readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def read_private_key(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise LocalError(f"key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise LocalError(f"key file {path} holds neither an Ed25519 nor an RSA key")
    return key
