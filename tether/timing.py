"""Per-hop timing of one request, for measuring overhead (``Infer.Request.timing``).

A request that asks for it (``timing`` set; over HTTP the ``x-tether-timing: 1`` header)
collects, on its final chunk, when it passed each hop: each service keeps its stamps in a
:class:`Hops` while it serves the request and adds them to the final chunk as that goes
by. The clock is the wall clock, so stamps of processes on one machine compare. A request
that does not ask costs one attribute test per stamp.
"""

from __future__ import annotations

import json
import time

from tether.rpc.service import Encoded
from tether.v1 import infer_pb2


class Hops:
    """One service's stamps for one request (nothing kept unless ``on``)."""

    __slots__ = ("on", "stamps")

    def __init__(self, on: bool) -> None:
        self.on = on
        self.stamps: list[tuple[str, int]] = []

    def stamp(self, at: str) -> None:
        if self.on:
            self.stamps.append((at, time.time_ns()))

    def add_to(self, chunk: infer_pb2.Infer.Chunk, *, last: str = "") -> None:
        """On the final chunk: its stamps (and ``last``, stamped now) join the chunk's."""
        if not (self.on and chunk.done):
            return
        if last:
            self.stamp(last)
        for at, ns in self.stamps:
            chunk.timing.stamps.add(at=at, unix_ns=ns)
        self.stamps.clear()


    def add_to_batch(self, batch: list[Encoded[infer_pb2.Infer.Chunk]], *, last: str = "") -> None:
        """:meth:`add_to` for a relayed batch: a final chunk that takes stamps is forwarded
        re-encoded (the others stay the bytes received)."""
        if not (self.on and batch and batch[-1].message.done):
            return
        chunk = batch[-1].message
        self.add_to(chunk, last=last)
        batch[-1] = Encoded(chunk, chunk.SerializeToString())


def stamps(timing: infer_pb2.Timing) -> dict[str, int]:
    """The stamps by hop name."""
    return {s.at: s.unix_ns for s in timing.stamps}


def timing_json(timing: infer_pb2.Timing) -> str:
    """The stamps and the model's time as one line of JSON (the HTTP edge's header)."""
    return json.dumps({"stamps": stamps(timing), "model_ns": timing.model_ns},
                      separators=(",", ":"))
