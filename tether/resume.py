"""Resuming a stream of chunks on another server, for whoever lost the first one.

The orchestrator resumes a request on another worker when a worker is lost
mid-stream; the gateway resumes it through another orchestrator when an
orchestrator is lost. Both rest on one fact: generation is repeatable (a seed
is pinned before the first dispatch), so a replay streams the same chunks again.
``Resume`` remembers what the client was sent (a count and a digest);
``Replay`` checks that a replay reproduces it, hides the chunks the client
already has, and raises ``Diverged`` when the replay differs (say, another
backend computed other numbers): such a stream cannot be spliced.

Both relay chunks in ``ChunkBatch``es: the chunks already received from upstream,
each with its bytes, forwarded in one frame and without re-encoding (the digests
are over the parsed chunks, so they do not depend on how chunks were framed).
"""

from __future__ import annotations

import hashlib

from tether.errors import TetherError
from tether.rpc import Encoded, RpcError, StatusCode
from tether.v1 import infer_pb2

#: Metadata a gateway sends with a request it resubmits after losing the orchestrator
#: that ran it: the public keys (hex, comma-separated) of every orchestrator it lost on
#: the way (the owner may be any of them): the job may be taken over at once.
LOST_ORCHESTRATOR = "x-tether-lost-orchestrator"
#: The details key of an error that says a server was lost mid-stream (its value names the
#: server: "worker w1"). It travels with the error, so that whoever resumes next -- an
#: orchestrator's worker, then the gateway's orchestrator -- knows the error by this key, not by
#: its message text.
LOST_SERVER = "lost_server"

#: Chunks relayed together, in order (see the module docstring).
ChunkBatch = list[Encoded[infer_pb2.Infer.Chunk]]


class Diverged(TetherError):
    """A replay that does not reproduce the chunks already sent."""


class Resume:
    """What a client has received of one request, so that another server can resume it."""

    def __init__(self) -> None:
        self.count = 0
        self._digest = hashlib.blake2b(digest_size=16)
        #: What was lost mid-stream so far ("worker w1", "orchestrator 3f2a…").
        self.lost_servers: list[str] = []

    def delivered(self, chunk: infer_pb2.Infer.Chunk) -> None:
        self.count += 1
        self._digest.update(_chunk_bytes(chunk))

    def replay(self) -> Replay:
        return Replay(self.count, self._digest.digest())

    def lost(self, server: str, exc: RpcError) -> RpcError:
        """The error that ``server`` (e.g. ``"worker w1"``) was lost mid-stream."""
        self.lost_servers.append(server)
        kind, _, name = server.partition(" ")
        when = f"mid-stream after {self.count} chunks" if self.count else "before its first chunk"
        return RpcError(
            StatusCode.UNAVAILABLE,
            f"{server} was lost {when}: {exc.message}",
            details={f"{kind}_id": name, "delivered": str(self.count), LOST_SERVER: server},
        )

    def unresumed(self, last: RpcError) -> RpcError:
        """The request's end when no other server could resume it."""
        details = dict(last.details)
        details["lost"] = ",".join(self.lost_servers)
        if last.code == StatusCode.UNAVAILABLE and LOST_SERVER in last.details:
            kind = self.lost_servers[-1].partition(" ")[0] if self.lost_servers else "server"
            message = f"{last.message}; no other {kind} could resume it"
        else:
            message = (f"{', '.join(self.lost_servers)} lost mid-stream; resuming failed: "
                       f"{last.message}")
        return RpcError(last.code, message, details=details)


class Replay:
    """One attempt's view: its first ``skip`` chunks must reproduce what was sent."""

    def __init__(self, skip: int, expected: bytes) -> None:
        self.skip = skip
        self.streamed = False
        self._expected = expected
        self._digest = hashlib.blake2b(digest_size=16)
        self._seen = 0

    def accept(self, chunk: infer_pb2.Infer.Chunk) -> bool:
        """False for a replayed chunk the client has; raises Diverged if the replay differs."""
        self.streamed = True
        if self._seen >= self.skip:
            return True
        self._seen += 1
        self._digest.update(_chunk_bytes(chunk))
        # A final chunk here means a shorter answer than the one being sent.
        if chunk.done or (self._seen == self.skip and self._digest.digest() != self._expected):
            raise Diverged(
                f"its replay on worker {chunk.worker_id} differs from the {self.skip} "
                "chunks already sent, so it cannot be resumed there",
                details={"worker_id": chunk.worker_id, "delivered": str(self.skip)},
            )
        return False


def _chunk_bytes(chunk: infer_pb2.Infer.Chunk) -> bytes:
    # A sealed chunk is compared as ciphertext: workers seal the same chunk alike.
    return (
        chunk.payload.SerializeToString(deterministic=True) + b"\x00" + chunk.sealed_payload
    )
