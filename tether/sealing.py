"""End-to-end payload sealing (spec §3.3, ``docs/security.md``): a request's input
readable only by the workers it was sealed to, its answer only by the requester.

The requester (a gateway for its HTTP, gRPC and plain Hyperswarm clients, or a
client that seals its own requests) draws a fresh 32-byte request key, puts the
input and what it is bound to (correlation id, tenant, model, the worker keys,
a random nonce and the time) in a ``SealedInput`` under that key
(XSalsa20-Poly1305), and seals the key in an X25519 sealed box to each worker
it may run on: the candidates the orchestrator's ``Place`` named. The X25519
keys are the workers' Ed25519 identity keys (those of their signed presence)
converted with libsodium's ``crypto_sign_ed25519_*_to_curve25519``.

A worker opens its key slot, decrypts, checks the binding against the clear
request, the time window and that the nonce is new (:class:`ReplayCache`), and
seals every chunk's payload back under a key derived from the request key. That
chunk encryption is deterministic (a synthetic nonce: a keyed BLAKE2b of the
sequence number and the payload), so two workers that compute the same chunk
produce the same ciphertext: the orchestrator can still check a resumed
stream's replayed chunks against what it sent, while it learns nothing but
whether they are equal. Sequence numbers are bound, so chunks cannot be moved.

Every refusal is a typed :class:`SealError` (PERMISSION_DENIED) with a
``reason`` detail; nothing here does I/O.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils
from google.protobuf.message import DecodeError

from tether.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from tether.keys import PUBLIC_KEY_SIZE, KeyPair
from tether.v1 import infer_pb2

KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE
NONCE_SIZE = 16
#: A sealed request older than this is refused (it also bounds a lost worker's resumption).
DEFAULT_MAX_AGE_MS = 10 * 60_000
#: Clock skew tolerated for a request dated in the future.
DEFAULT_MAX_SKEW_MS = 30_000
#: Nonces a worker remembers; when all are younger than the window it refuses new work.
DEFAULT_REPLAY_CACHE = 65_536
#: At most this many key slots in one sealed request.
MAX_KEY_SLOTS = 16
#: ``details['reason']`` of the orchestrator's UNAVAILABLE when none of the workers a
#: request was sealed to can take it now: place it and seal it again.
RESEAL = "reseal"
_ENC_PERSON = b"tether-chunk-enc"
_SIV_PERSON = b"tether-chunk-siv"


class SealError(PermissionDenied):
    """A sealed request or chunk was refused; ``details['reason']`` says why."""

    reason = "sealed"

    def __init__(self, message: str, *, details: dict[str, str] | None = None) -> None:
        super().__init__(message, details={"reason": self.reason, **(details or {})})


class NotSealedForThisWorker(SealError):
    """No key slot opens with this worker's key: the request was sealed to others."""

    reason = "other_worker"


class TamperedSeal(SealError):
    """The ciphertext, a key slot or a chunk does not authenticate."""

    reason = "tampered"


class SealBindingMismatch(SealError):
    """The sealed input names another correlation id, tenant, model or worker set."""

    reason = "binding"


class StaleSeal(SealError):
    """The sealed request is too old or dated in the future."""

    reason = "stale"


class ReplayedSeal(SealError):
    """The sealed request's nonce was already accepted by this worker."""

    reason = "replayed"


def x25519_public_key(ed25519_public_key: bytes) -> nacl.public.PublicKey:
    """The X25519 form of a worker's Ed25519 identity key."""
    if len(ed25519_public_key) != PUBLIC_KEY_SIZE:
        raise InvalidArgument(
            f"a worker key is {PUBLIC_KEY_SIZE} bytes, got {len(ed25519_public_key)}"
        )
    try:
        return nacl.signing.VerifyKey(ed25519_public_key).to_curve25519_public_key()
    except nacl.exceptions.RuntimeError as exc:  # not a point on the curve
        raise InvalidArgument(f"not an Ed25519 public key: {ed25519_public_key.hex()}") from exc


class ChunkKey:
    """Seals and opens one request's chunk payloads (see the module docstring)."""

    def __init__(self, request_key: bytes) -> None:
        self._box = nacl.secret.SecretBox(_derive(request_key, _ENC_PERSON))
        self._siv = _derive(request_key, _SIV_PERSON)

    def _nonce(self, seq: int, payload: bytes) -> bytes:
        return nacl.hash.blake2b(
            seq.to_bytes(8, "big") + payload,
            key=self._siv,
            digest_size=nacl.secret.SecretBox.NONCE_SIZE,
            encoder=nacl.encoding.RawEncoder,
        )

    def seal(self, chunk: infer_pb2.Infer.Chunk) -> None:
        """Move ``chunk.payload`` into ``chunk.sealed_payload`` (in place)."""
        plain = chunk.payload.SerializeToString(deterministic=True)
        chunk.ClearField("payload")
        chunk.sealed_payload = bytes(self._box.encrypt(plain, self._nonce(chunk.seq, plain)))

    def open(self, chunk: infer_pb2.Infer.Chunk) -> infer_pb2.Infer.Chunk:
        """A copy of ``chunk`` with its payload opened; TamperedSeal if it does not
        authenticate, was moved to another sequence number, or came in clear."""
        if chunk.HasField("payload") or not chunk.sealed_payload:
            raise TamperedSeal(
                f"chunk {chunk.seq} of a sealed request is not sealed",
                details={"seq": str(chunk.seq)},
            )
        try:
            plain = self._box.decrypt(chunk.sealed_payload)
        except nacl.exceptions.CryptoError:
            raise TamperedSeal(
                f"chunk {chunk.seq} does not authenticate", details={"seq": str(chunk.seq)}
            ) from None
        nonce = chunk.sealed_payload[: nacl.secret.SecretBox.NONCE_SIZE]
        if nonce != self._nonce(chunk.seq, plain):
            raise TamperedSeal(
                f"chunk {chunk.seq} was sealed under another sequence number",
                details={"seq": str(chunk.seq)},
            )
        opened = infer_pb2.Infer.Chunk()
        opened.CopyFrom(chunk)
        opened.ClearField("sealed_payload")
        try:
            opened.payload.ParseFromString(plain)
        except DecodeError:
            raise TamperedSeal(f"chunk {chunk.seq} holds no payload") from None
        return opened


def _derive(request_key: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"", key=request_key, person=person, digest_size=KEY_SIZE, encoder=nacl.encoding.RawEncoder
    )


def seal_request(
    request: infer_pb2.Infer.Request,
    worker_keys: Iterable[bytes],
    *,
    now_ms: int,
    request_key: bytes | None = None,
    nonce: bytes | None = None,
) -> tuple[infer_pb2.Infer.Request, ChunkKey]:
    """A copy of ``request`` with its input sealed to ``worker_keys`` (Ed25519 keys),
    and the key that opens its chunks. ``request`` must carry the correlation id,
    tenant and model it will be sent with: they are bound into the seal."""
    keys = list(dict.fromkeys(bytes(k) for k in worker_keys))
    if not keys:
        raise InvalidArgument("a sealed request needs at least one worker key")
    if len(keys) > MAX_KEY_SLOTS:
        keys = keys[:MAX_KEY_SLOTS]
    if not (request.correlation_id and request.tenant_id and request.model_id):
        raise InvalidArgument("a sealed request is bound to its correlation id, tenant and model")
    key = request_key if request_key is not None else nacl.utils.random(KEY_SIZE)
    inner = infer_pb2.SealedInput(
        correlation_id=request.correlation_id,
        tenant_id=request.tenant_id,
        model_id=request.model_id,
        worker_keys=keys,
        nonce=nonce if nonce is not None else os.urandom(NONCE_SIZE),
        issued_at_unix_ms=now_ms,
    )
    inner.input.CopyFrom(request.input)
    sealed = infer_pb2.Infer.Request()
    sealed.CopyFrom(request)
    sealed.ClearField("input")
    sealed.sealed.ciphertext = bytes(
        nacl.secret.SecretBox(key).encrypt(inner.SerializeToString(deterministic=True))
    )
    for worker_key in keys:
        box = nacl.public.SealedBox(x25519_public_key(worker_key))
        sealed.sealed.keys.add(worker_key=worker_key, sealed_key=bytes(box.encrypt(key)))
    return sealed, ChunkKey(key)


def sealed_worker_keys(request: infer_pb2.Infer.Request) -> set[bytes]:
    """The workers a sealed request has a key slot for (what placement may choose)."""
    return {bytes(slot.worker_key) for slot in request.sealed.keys}


class ReplayCache:
    """Nonces of accepted sealed requests, bounded in size and time: a nonce is
    remembered for the acceptance window (``max_age_ms`` + ``max_skew_ms``); past it,
    the request is refused as stale anyway. When every remembered nonce is still
    inside the window, new requests are refused (RESOURCE_EXHAUSTED, placed
    elsewhere) rather than forgetting one that could then be replayed."""

    def __init__(
        self,
        *,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        size: int = DEFAULT_REPLAY_CACHE,
    ) -> None:
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self.size = size
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # nonce -> accepted at

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: bytes, issued_at_ms: int, now_ms: int) -> None:
        """Refuse a stale or replayed nonce; otherwise remember it."""
        age = now_ms - issued_at_ms
        if age > self.max_age_ms:
            raise StaleSeal(f"sealed request is {age} ms old (limit {self.max_age_ms} ms)")
        if -age > self.max_skew_ms:
            raise StaleSeal(f"sealed request is dated {-age} ms in the future")
        # A request accepted at time a was issued no later than a + skew, so it is stale
        # (refused above) from a + skew + max_age on: its nonce can go then.
        horizon = now_ms - self.max_age_ms - self.max_skew_ms
        while self._seen and next(iter(self._seen.values())) < horizon:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise ReplayedSeal(
                "sealed request already accepted (replay)", details={"nonce": nonce.hex()}
            )
        if len(self._seen) >= self.size:
            raise ResourceExhausted(
                "too many sealed requests inside the replay window; place it elsewhere"
            )
        self._seen[nonce] = now_ms


@dataclass
class OpenedRequest:
    """A worker's view of a sealed request: the plain request and its chunk key."""

    request: infer_pb2.Infer.Request
    chunks: ChunkKey


class RequestOpener:
    """A worker's side: opens requests sealed to its key, refusing replays."""

    def __init__(self, keypair: KeyPair, replays: ReplayCache | None = None) -> None:
        self.public_key = keypair.public_key
        self._box = nacl.public.SealedBox(keypair.signing_key.to_curve25519_private_key())
        self.replays = replays or ReplayCache()

    def open(self, request: infer_pb2.Infer.Request, *, now_ms: int) -> OpenedRequest:
        if request.HasField("input"):
            raise InvalidArgument("a sealed request carries no clear input")
        slot = next((s for s in request.sealed.keys if s.worker_key == self.public_key), None)
        if slot is None:
            raise NotSealedForThisWorker(
                f"request {request.correlation_id} was sealed to other workers, not to this "
                "one; seal it again to the workers Place names",
                details={"worker_key": self.public_key.hex()},
            )
        try:
            key = self._box.decrypt(slot.sealed_key)
            plain = nacl.secret.SecretBox(key).decrypt(request.sealed.ciphertext)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
            raise TamperedSeal(
                f"sealed request {request.correlation_id} does not open with this worker's "
                "key: tampered, or sealed to another key under this one's name"
            ) from None
        try:
            inner = infer_pb2.SealedInput.FromString(plain)
        except DecodeError:
            raise TamperedSeal("sealed request holds no SealedInput") from None
        bound = (inner.correlation_id, inner.tenant_id, inner.model_id)
        clear = (request.correlation_id, request.tenant_id, request.model_id)
        if bound != clear or self.public_key not in inner.worker_keys:
            raise SealBindingMismatch(
                "sealed input is bound to another request "
                f"(correlation id, tenant, model {bound} against {clear}) or worker set",
            )
        if len(inner.nonce) != NONCE_SIZE:
            raise TamperedSeal(f"sealed nonce must be {NONCE_SIZE} bytes")
        self.replays.check(inner.nonce, inner.issued_at_unix_ms, now_ms)
        opened = infer_pb2.Infer.Request()
        opened.CopyFrom(request)
        opened.ClearField("sealed")
        opened.input.CopyFrom(inner.input)
        return OpenedRequest(opened, ChunkKey(key))
