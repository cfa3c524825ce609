"""Fuzz targets: one function per decoder of bytes a peer or client controls.

Each target takes arbitrary bytes and returns None. The invariant is the one the
hypothesis fuzz tests state: the input is parsed, or refused with the decoder's typed
error (a ``RemoteProtocolError`` of the transport, a ``TetherError`` of the services),
never another exception and never a hang. A target raises only for a real bug.

Targets that take a sequence (datagrams, frames, chunks of a byte stream) cut their input
into parts with :func:`split`: a length byte, then that many bytes, repeated.

``tools/fuzz`` runs them under atheris (coverage-guided); ``tests/fuzz/test_targets.py``
runs each briefly in CI; ``seeds()`` gives the valid encodings the corpus starts from.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import trio
import trio.testing

from gateway import openai
from gateway.http import serve_connection
from p2p_transport import crypto
from p2p_transport import rpc as mux_rpc
from p2p_transport.cenc import DecodeError, Reader, RemoteProtocolError, SocketAddress, Writer
from p2p_transport.dht_rpc import messages as dht
from p2p_transport.hyperdht import messages as hdm
from p2p_transport.hyperdht import persistent
from p2p_transport.noise import HandshakeResult, dht_handshake
from p2p_transport.protomux import Protomux
from p2p_transport.secret_stream import SecretStreamCore
from p2p_transport.udx.core import StreamCore
from p2p_transport.udx.packet import DATA, Packet
from tether import blocking
from tether.errors import InvalidArgument
from tether.rpc import FrameTooLarge, LengthPrefixedStream
from tether.rpc.connection import RpcConnection
from tether.v1 import rpc_pb2

Target = Callable[[bytes], None]

TESTS = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"


def split(data: bytes, limit: int = 16) -> list[bytes]:
    """Cut ``data`` into at most ``limit`` parts: a length byte, then that many bytes."""
    parts: list[bytes] = []
    i = 0
    while i < len(data) and len(parts) < limit:
        n = data[i]
        parts.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return parts


def join(parts: list[bytes]) -> bytes:
    """The inverse of :func:`split` (each part under 256 bytes), for seeds."""
    out = bytearray()
    for part in parts:
        rest = part
        while len(rest) > 255:  # a longer part becomes several (fine for streams of bytes)
            out += b"\xff" + rest[:255]
            rest = rest[255:]
        out += bytes([len(rest)]) + rest
    return bytes(out)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (its stream answers at once) without trio."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")  # a bug of the target, not the decoder


# -- compact-encoding ---------------------------------------------------------------------


def _composite(r: Reader) -> object:
    """A struct touching every decoder, in the style of the DHT messages."""
    flags = r.uint()
    out: list[object] = [flags, r.uint16(), r.buffer(), r.optional_buffer(), r.string(), r.bool()]
    if flags & 1:
        out.append(r.array(Reader.ipv4_address))
    if flags & 2:
        out.append(r.ipv6_address())
    if flags & 4:
        out.append(r.fixed32())
    if flags & 8:
        out.append(r.array(Reader.uint))
    out.extend([r.bitfield(), r.uint24(), r.uint32(), r.uint64(), r.raw()])
    return out


def cenc(data: bytes) -> None:
    # the composite struct, and every prefix of a short input (truncation at each field)
    for end in ([len(data)] if len(data) > 64 else range(len(data) + 1)):
        with contextlib.suppress(DecodeError):
            _composite(Reader(data, 0, end))


# -- UDX -------------------------------------------------------------------------------------


def udx(data: bytes) -> None:
    """Datagrams decoded, then fed to a stream with data in flight (acks, SACKs, data)."""
    core = StreamCore(1)
    core.connect(1)
    core.write(b"data" * 1000)
    core.datagrams_to_send(0.0)
    for i, raw in enumerate(split(data)):
        try:
            pkt = Packet.decode(raw)
        except RemoteProtocolError:
            continue
        now = float(i)
        core.receive(pkt, now)
        core.datagrams_to_send(now)
        core.handle_timer(now)
        core.read(1 << 16)


# -- dht-rpc and HyperDHT messages ---------------------------------------------------------


def dht_rpc(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        dht.decode_message(data)


_HYPERDHT: list[Callable[[bytes], object]] = [
    hdm.decode_handshake, hdm.decode_holepunch, hdm.decode_noise_payload,
    hdm.decode_holepunch_payload, hdm.decode_peer, hdm.decode_announce,
    hdm.decode_lookup_reply, persistent.decode_mutable_value, persistent.decode_mutable_put,
]


def hyperdht(data: bytes) -> None:
    """The first byte picks the message type; the rest is the message."""
    if not data:
        return
    with contextlib.suppress(RemoteProtocolError):
        _HYPERDHT[data[0] % len(_HYPERDHT)](data[1:])


# -- protomux and protomux-rpc ------------------------------------------------------------


def protomux(data: bytes) -> None:
    """Frames into a mux that pairs every protocol (so opens create channels), then the
    protomux-rpc decoders on the same bytes."""
    m = Protomux()
    m.pair("tether", None, lambda id_: None)
    m.pair("", None, lambda id_: None)
    for frame in split(data):
        try:
            m.receive(frame)
        except RemoteProtocolError:
            break  # the mux is broken for good: the stream is closed on it
    for decode in (mux_rpc.decode_request, mux_rpc.decode_response, mux_rpc.decode_value):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


# -- secret-stream -------------------------------------------------------------------------


def _handshake_pair() -> tuple[HandshakeResult, HandshakeResult]:
    server = crypto.key_pair(bytes(32))
    client = dht_handshake(crypto.key_pair(bytes([7]) * 32), server.public_key)
    responder = dht_handshake(server)
    responder.recv(client.send(b""))
    client.recv(responder.send(b""))
    assert client.result is not None and responder.result is not None
    return client.result, responder.result


_HANDSHAKE = _handshake_pair()


def secret_stream(data: bytes) -> None:
    """First byte even: the bytes go raw into a responder (header, then frames, chunked as
    split). Odd: valid frames of the parts as messages, cut where the last part says."""
    if not data:
        return
    hi, hr = _HANDSHAKE
    b = SecretStreamCore(False, hr)
    parts = split(data[1:])
    try:
        if data[0] % 2 == 0:
            for chunk in parts:
                b.receive_data(chunk)
                while b.next_message() is not None:
                    pass
            return
        a = SecretStreamCore(True, hi)
        wire = a.data_to_send() + b"".join(a.encrypt(p) for p in parts)
        cuts = sorted({c % (len(wire) + 1) for c in (parts[-1] if parts else b"")})
        for lo, hi_ in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            b.receive_data(wire[lo:hi_])
        got = []
        while (msg := b.next_message()) is not None:
            got.append(msg)
        if got != [p for p in parts if p]:  # empty messages are keepalives, filtered
            raise AssertionError(f"messages lost or changed: {parts!r} -> {got!r}")
        for p in parts:
            b.open_datagram(p)
    except RemoteProtocolError:
        pass


# -- the RPC envelope --------------------------------------------------------------------------


class _Chunks(trio.abc.Stream):
    """Test double of a byte stream: answers ``receive_some`` from a list at once."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise AssertionError("the reader sent")

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def rpc_envelope(data: bytes) -> None:
    """The bytes as a length-prefixed stream (chunked as split), then every frame read from it
    as an ``RpcFrame`` into a connection on each side (no nursery: nothing is sent)."""
    chunks = [c for c in split(data) if c]
    reader = LengthPrefixedStream(_Chunks(chunks), max_frame_size=64)
    frames: list[bytes] = []
    for _ in range(len(data) + 1):  # each round takes 4 bytes or ends
        try:
            frames.append(drive(reader.receive_message()))
        except FrameTooLarge:
            continue
        except (trio.EndOfChannel, trio.BrokenResourceError):
            break
    for initiator in (True, False):
        conn = RpcConnection(_Chunks([]), initiator=initiator)  # type: ignore[arg-type]
        for frame in [data, *frames]:
            conn._on_raw_frame(frame)


# -- the HTTP edge ------------------------------------------------------------------------------


def openai_bodies(data: bytes) -> None:
    for parse in (openai.parse_completion, openai.parse_chat, openai.parse_embeddings):
        with contextlib.suppress(InvalidArgument):
            parse(data)


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """Test double of the routes (an ASGI app): answers 200 with the body's size."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def http_edge(data: bytes) -> None:
    """Raw bytes (chunked as split) on one connection to the edge (its bounds, Hypercorn's
    parsing), in virtual time: every answer is an HTTP response below 500 (or 501, for a
    transfer coding it does not implement), never a hang."""

    async def main() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        received = bytearray()

        async def send() -> None:
            try:
                for part in split(data):
                    await client.send_all(part)
                await client.send_eof()
            except trio.BrokenResourceError:
                pass

        async def receive() -> None:
            while chunk := await client.receive_some():
                received.extend(chunk)

        with trio.fail_after(120):  # (virtual) at worst the head timeout
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_connection, server, _echo)
                nursery.start_soon(send)
                nursery.start_soon(receive)
        return bytes(received)

    with blocking.inline():
        out = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # 501 is HTTP's own refusal of what it does not implement (an unknown transfer coding)
    if out and not (out.startswith(b"HTTP/1.1 ") and (int(out[9:12]) < 500 or out[9:12] == b"501")):
        raise AssertionError(f"answer not below 500: {out[:200]!r}")


TARGETS: dict[str, Target] = {
    "cenc": cenc,
    "udx": udx,
    "dht_rpc": dht_rpc,
    "hyperdht": hyperdht,
    "protomux": protomux,
    "secret_stream": secret_stream,
    "rpc_envelope": rpc_envelope,
    "openai_bodies": openai_bodies,
    "http_edge": http_edge,
}

# -- seeds: valid encodings from the golden vectors and the codecs -----------------------------


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def _vector_hex(path: Path) -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in _jsonl(path)]


def _seeds_cenc() -> list[bytes]:
    addr = SocketAddress("10.0.0.1", 49737)
    out = []
    for flags in (0, 1, 2, 4, 7, 15):
        w = Writer().uint(flags).uint16(513).buffer(b"buf").optional_buffer(None)
        w.string("text").bool(True)
        if flags & 1:
            w.array([addr, addr], Writer.ipv4_address)
        if flags & 2:
            w.ipv6_address(SocketAddress("::1", 1))
        if flags & 4:
            w.fixed32(bytes(range(32)))
        if flags & 8:
            w.array([1, 300, 70000], Writer.uint)
        out.append(w.bitfield(5).uint24(1 << 20).uint32(1 << 30).uint64(1 << 40).getvalue())
    return out


def _seeds_udx() -> list[bytes]:
    pkts = [Packet(DATA, 1, 1000, 0, 1, b"hello"), Packet(0, 1, 1000, 0, 3),
            Packet(0, 1, 1000, 0, 2, sacks=((3, 5),)), Packet(DATA, 1, 1000, 1, 2, b"x" * 40)]
    return [join([p.encode() for p in pkts]), join([pkts[1].encode()])]


def _seeds_dht_rpc() -> list[bytes]:
    return _vector_hex(TESTS / "transport2" / "vectors" / "dht_rpc.jsonl")


def _seeds_hyperdht() -> list[bytes]:
    names = ["handshake", "holepunch", "noisePayload", "holepunchPayload", "peer", "announce",
             "lookupRawReply"]
    out = []
    for v in _jsonl(TESTS / "transport2" / "vectors" / "hyperdht.jsonl"):
        if v["type"] in names:
            out.append(bytes([names.index(v["type"])]) + bytes.fromhex(v["hex"]))
    mv = persistent.MutableValue(3, b"value", bytes(64))
    out.append(bytes([7]) + persistent.encode_mutable_value(mv))
    out.append(bytes([8]) + persistent.encode_mutable_put(bytes(32), mv))
    return out


def _seeds_protomux() -> list[bytes]:
    sent: list[bytes] = []
    a = Protomux()
    a.on_output = lambda: sent.extend(a.outbox) or a.outbox.clear()  # type: ignore[func-returns-value]
    ch = a.create_channel("tether", b"id", handshake=True)
    assert ch is not None
    ch.open(b"hs")
    ch.send(0, b"message")
    ch.close()
    req = mux_rpc.encode_request(mux_rpc.RpcRequest(1, "echo", mux_rpc.encode_value(b"hi")))
    return [join(sent), req, mux_rpc.encode_response(mux_rpc.RpcResponse(1, b"x"))]


def _seeds_secret_stream() -> list[bytes]:
    a = SecretStreamCore(True, _HANDSHAKE[0])
    header = a.data_to_send()
    return [b"\x00" + join([header, a.encrypt(b"hello"), a.encrypt(b"")]),
            b"\x01" + join([b"hello", b"", b"x" * 40, bytes([3, 50, 61])])]


def _frame(**kw: Any) -> bytes:
    return rpc_pb2.RpcFrame(**kw).SerializeToString()


def _seeds_rpc_envelope() -> list[bytes]:
    frames = [
        _frame(call_id=2, open=rpc_pb2.RpcOpen(method="/tether.v1.Worker/GetHealth",
                                                     initial_window=4)),
        _frame(call_id=2, message=rpc_pb2.RpcMessage(payload=b"p")),
        _frame(call_id=2, half_close=rpc_pb2.RpcHalfClose()),
        _frame(call_id=1, trailer=rpc_pb2.RpcTrailer(code="STATUS_CODE_NOT_FOUND", message="no")),
        _frame(call_id=2, cancel=rpc_pb2.RpcCancel(reason="r")),
        _frame(call_id=1, window=rpc_pb2.RpcWindow(credits=3)),
    ]
    stream = b"".join(len(f).to_bytes(4, "little") + f for f in frames)
    return [join([stream[:7], stream[7:]]), join([stream])]


def _seeds_openai_bodies() -> list[bytes]:
    return [json.dumps(b).encode() for b in [
        {"model": "kjv-textgen@1.0", "prompt": "In the beginning", "max_tokens": 8,
         "temperature": 0.7, "top_k": 5, "stop": ["\n"], "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": "tiny-chat@1", "max_completion_tokens": 7, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"model": "all-minilm-l6-v2", "input": ["a", "b"], "encoding_format": "base64"},
    ]]


def _seeds_http_edge() -> list[bytes]:
    body = _seeds_openai_bodies()[0]
    post = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    chunked = (b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
    return [join([post]), join([get, get]), join([chunked[:30], chunked[30:]])]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "cenc": _seeds_cenc,
    "udx": _seeds_udx,
    "dht_rpc": _seeds_dht_rpc,
    "hyperdht": _seeds_hyperdht,
    "protomux": _seeds_protomux,
    "secret_stream": _seeds_secret_stream,
    "rpc_envelope": _seeds_rpc_envelope,
    "openai_bodies": _seeds_openai_bodies,
    "http_edge": _seeds_http_edge,
}


def corpus(name: str) -> list[bytes]:
    """The committed seed files of ``name``, sorted by file name."""
    folder = CORPUS / name
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []
