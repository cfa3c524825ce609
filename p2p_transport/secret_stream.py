"""@hyperswarm/secret-stream: encrypted, framed messages over a reliable byte stream.

Wire format (both directions): frames of ``uint24 LE length || bytes``. The first frame each
side sends is the 56-byte header ``stream id (32) || secretstream header (24)``; every later
frame is one message sealed with libsodium's ``crypto_secretstream_xchacha20poly1305`` (17 bytes
of overhead). Keys come from a Noise handshake: either finished outside (hyperdht passes its IK
result) or run in band as Noise XX over the same framing. Unordered datagrams (``send``) travel
as UDX MESSAGE packets sealed with ``crypto_secretbox`` under per-direction keys.

:class:`SecretStreamCore` is the sans-IO protocol (bytes in, messages and bytes out);
:class:`SecretStream` is the trio adapter, both message-oriented (:meth:`SecretStream.send_message`,
:meth:`SecretStream.receive_message`) and a :class:`trio.abc.HalfCloseableStream`.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import nacl.bindings as sodium
import nacl.exceptions
import trio

from ._sodium import StreamOpener, StreamSealer
from .cenc import RemoteProtocolError
from .crypto import NS_SS_INITIATOR, NS_SS_RESPONDER, NS_SS_SEND, KeyPair, hash_batch, key_pair
from .noise import HandshakeError, HandshakeResult, NoiseHandshake, Pattern, stream_id

__all__ = [
    "DEFAULT_KEEPALIVE",
    "MAX_MESSAGE",
    "SecretStream",
    "SecretStreamCore",
    "SecretStreamError",
    "open_secret_stream",
]

ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
HEADERBYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
ID_HEADER_BYTES = 32 + HEADERBYTES
#: Largest frame body (uint24); a message is at most this minus :data:`ABYTES`.
MAX_FRAME = 2**24 - 1
MAX_MESSAGE = MAX_FRAME - ABYTES
#: hyperdht's ``connectionKeepAlive``: an empty message after this long without writes.
DEFAULT_KEEPALIVE = 5.0
_BOX_MAC = 16
_BOX_NONCE = 24


class SecretStreamError(RemoteProtocolError):
    """The peer sent an invalid header, frame or ciphertext; the stream cannot continue."""


class SecretStreamCore:
    """Sans-IO secret-stream. Feed received bytes to :meth:`receive_data`; send what it returns.

    ``handshake`` is a finished Noise result (the hyperdht case). Without it the core runs
    Noise XX in band with ``static_key_pair`` (a fresh one if omitted); ``open`` tells when keys
    are ready. ``filter_empty`` drops zero-length messages (keepalives), as JS does whenever a
    keepalive is configured.
    """

    def __init__(self, is_initiator: bool, handshake: HandshakeResult | None = None, *,
                 static_key_pair: KeyPair | None = None, filter_empty: bool = True) -> None:
        self.is_initiator = is_initiator
        self.filter_empty = filter_empty
        self.handshake: HandshakeResult | None = None
        self._noise: NoiseHandshake | None = None
        self._push = sodium.crypto_secretstream_xchacha20poly1305_state()
        self._pull = sodium.crypto_secretstream_xchacha20poly1305_state()
        self._header_received = False
        self._buf = bytearray()
        self._pos = 0
        self._sealer = StreamSealer(self._push)
        self._opener = StreamOpener(self._pull)
        self._messages: deque[bytes] = deque()
        self._outgoing = bytearray()
        self._send_key = b""
        self._recv_key = b""
        self._counter = 0
        self._counter_start = 0
        self.failed: SecretStreamError | None = None
        if handshake is not None:
            self._setup(handshake)
        else:
            self._noise = NoiseHandshake(Pattern.XX, is_initiator, static_key_pair or key_pair())
            if is_initiator:
                self._outgoing += _frame(self._noise.send())

    @property
    def open(self) -> bool:
        """Keys are set up: messages can be sent."""
        return self.handshake is not None

    @property
    def remote_open(self) -> bool:
        """The peer's header arrived: messages can be received."""
        return self._header_received

    def data_to_send(self) -> bytes:
        """Bytes produced by the protocol itself (header, handshake messages)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_message(self) -> bytes | None:
        return self._messages.popleft() if self._messages else None

    # ------------------------------------------------------------------ setup

    def _setup(self, hs: HandshakeResult) -> None:
        self.handshake = hs
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._push, hs.tx[:32])
        self._outgoing += _frame(stream_id(hs.hash, self.is_initiator) + header)
        mine, theirs = ((NS_SS_INITIATOR, NS_SS_RESPONDER) if self.is_initiator
                        else (NS_SS_RESPONDER, NS_SS_INITIATOR))
        self._send_key = hash_batch([mine, NS_SS_SEND], hs.hash)
        self._recv_key = hash_batch([theirs, NS_SS_SEND], hs.hash)
        self._counter_start = int.from_bytes(os.urandom(8), "little")
        self._counter = self._counter_start

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        """Consume raw bytes; complete messages become available via :meth:`next_message`."""
        if self.failed is not None:
            raise self.failed
        buf = self._buf
        if not buf:
            # fast path: frames straight out of ``data``, only a partial tail is buffered
            data = bytes(data)
            end = len(data)
            pos = 0
            try:
                while end - pos >= 3:
                    n = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                    if end - pos - 3 < n:
                        break
                    frame = data[pos + 3:pos + 3 + n]
                    pos += 3 + n
                    self._incoming(frame)
            except SecretStreamError as exc:
                self.failed = exc
                raise
            if pos < end:
                buf += data[pos:]
            return
        buf += data
        pos = self._pos
        try:
            while len(buf) - pos >= 3:
                n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                if len(buf) - pos - 3 < n:
                    break
                frame = bytes(buf[pos + 3:pos + 3 + n])
                pos += 3 + n
                self._incoming(frame)
        except SecretStreamError as exc:
            self.failed = exc
            raise
        finally:
            if pos:
                del buf[:pos]
            self._pos = 0

    def _incoming(self, frame: bytes) -> None:
        if self._noise is not None:
            self._incoming_handshake(frame)
            return
        if not self._header_received:
            if len(frame) != ID_HEADER_BYTES:
                raise SecretStreamError("Invalid header message received")
            assert self.handshake is not None
            if frame[:32] != self.handshake.remote_stream_id:
                raise SecretStreamError("Invalid header received")
            try:
                sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                    self._pull, frame[32:], self.handshake.rx[:32])
            except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError) as exc:
                raise SecretStreamError("Invalid header received") from exc
            self._header_received = True
            return
        if len(frame) < ABYTES:
            raise SecretStreamError("Invalid message received")
        message = self._opener.open(frame)
        if message is None:
            raise SecretStreamError("message failed to decrypt")
        if message or not self.filter_empty:
            self._messages.append(message)

    def _incoming_handshake(self, frame: bytes) -> None:
        noise = self._noise
        assert noise is not None
        try:
            noise.recv(frame)
            if not noise.complete:
                self._outgoing += _frame(noise.send())
        except HandshakeError as exc:
            raise SecretStreamError("Noise handshake failed") from exc
        if noise.result is not None:
            self._noise = None
            self._setup(noise.result)

    # ------------------------------------------------------------------ sending

    def encrypt(self, message: bytes) -> bytes:
        """One framed, encrypted message (an empty one is a keepalive)."""
        if self.handshake is None:
            raise RuntimeError("secret stream is not open yet")
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        if type(message) is not bytes:
            message = bytes(message)
        return self._sealer.seal_frame(message)

    # ------------------------------------------------------------------ unordered datagrams

    def box_datagram(self, message: bytes) -> bytes:
        """Seal one unordered datagram (``send``): ``counter(8) || secretbox``."""
        if self.handshake is None:
            raise RuntimeError("secret stream is not open yet")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        if self._counter == self._counter_start:
            raise RuntimeError("udp send nonce exhausted")
        counter = self._counter.to_bytes(8, "little")
        nonce = counter + bytes(_BOX_NONCE - 8)
        return counter + sodium.crypto_secretbox_easy(message, nonce, self._send_key)

    def open_datagram(self, envelope: bytes) -> bytes | None:
        """The plaintext of a peer's datagram, or None when it does not authenticate."""
        if self.handshake is None or len(envelope) < 8 + _BOX_MAC:
            return None
        nonce = envelope[:8] + bytes(_BOX_NONCE - 8)
        try:
            return bytes(sodium.crypto_secretbox_open_easy(envelope[8:], nonce, self._recv_key))
        except nacl.exceptions.CryptoError:
            return None


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + body


@runtime_checkable
class _MessageTransport(Protocol):
    def send_message(self, data: bytes) -> None: ...

    async def receive_message(self) -> bytes: ...


@runtime_checkable
class _PushTransport(Protocol):
    """A raw stream that can hand over received bytes and take writes without yielding
    (:class:`~p2p_transport.udx.UdxStream`)."""

    def set_reader(self, reader: Callable[[], None] | None) -> None: ...

    def receive_nowait(self, max_bytes: int = 65536) -> bytes | None: ...

    def can_send_nowait(self) -> bool: ...

    def send_nowait(self, data: bytes) -> None: ...


class SecretStream(trio.abc.HalfCloseableStream):
    """Encrypted messages over ``raw`` (a UDX stream, or any half-closeable trio stream).

    Call :meth:`start` once (it sends the header, and runs the XX handshake when no finished
    handshake was given). :func:`open_secret_stream` does that and runs the keepalive.
    """

    def __init__(self, raw: trio.abc.HalfCloseableStream, is_initiator: bool,
                 handshake: HandshakeResult | None = None, *,
                 static_key_pair: KeyPair | None = None,
                 keepalive: float | None = DEFAULT_KEEPALIVE) -> None:
        self.raw = raw
        self.keepalive = keepalive
        self.core = SecretStreamCore(is_initiator, handshake, static_key_pair=static_key_pair,
                                     filter_empty=bool(keepalive))
        self._send_lock = trio.StrictFIFOLock()
        self._stream_sending = False
        self._receiving = False
        self._leftover = b""
        self._eof = False
        self._closed = False
        self._closed_event = trio.Event()
        self._last_write = trio.current_time()
        self._started = False
        self._push: _PushTransport | None = raw if isinstance(raw, _PushTransport) else None
        self._on_message: Callable[[bytes], None] | None = None
        self._delivered = trio.Event()
        self._deliver_error: BaseException | None = None

    # ---------------------------------------------------------------- properties

    @property
    def handshake(self) -> HandshakeResult | None:
        return self.core.handshake

    @property
    def handshake_hash(self) -> bytes | None:
        return self.core.handshake.hash if self.core.handshake else None

    @property
    def remote_public_key(self) -> bytes | None:
        return self.core.handshake.remote_public_key if self.core.handshake else None

    @property
    def is_initiator(self) -> bool:
        return self.core.is_initiator

    # ---------------------------------------------------------------- plumbing

    async def _write_raw(self, data: bytes) -> None:
        if data:
            await self.raw.send_all(data)
            self._last_write = trio.current_time()

    async def _fill(self) -> bool:
        """Read once from the raw stream into the core; False at EOF."""
        data = await self.raw.receive_some(65536)
        if not data:
            return False
        try:
            self.core.receive_data(data)
        except SecretStreamError as exc:
            self._abort_raw()
            raise trio.BrokenResourceError(str(exc)) from exc
        out = self.core.data_to_send()
        if out:
            async with self._send_lock:
                await self._write_raw(out)
        return True

    def _abort_raw(self) -> None:
        destroy = getattr(self.raw, "destroy", None)
        if callable(destroy):
            destroy()

    async def start(self) -> None:
        """Send our header (or first handshake message) and, for XX, finish the handshake."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        async with self._send_lock:
            await self._write_raw(self.core.data_to_send())
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        self._receiving = True
        try:
            while not self.core.open:
                if not await self._fill():
                    raise trio.BrokenResourceError("stream ended during the handshake")
        finally:
            self._receiving = False

    # ---------------------------------------------------------------- messages

    async def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message; the peer receives it whole.

        Cancellation is safe: the message is either sent whole or not at all, and the
        stream stays usable. (Sealing advances the secretstream state, so a sealed frame
        that never reached the wire would make every later one fail to decrypt.)
        """
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        # uncontended: take the lock without yielding; the raw send is the checkpoint
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            push = self._push
            if push is not None:
                # Wait for room while nothing is sealed (cancellable), then seal and write
                # without yielding.
                while not push.can_send_nowait():
                    await self.raw.wait_send_all_might_not_block()
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                push.send_nowait(self.core.encrypt(bytes(message)))
                self._last_write = trio.current_time()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            frame = self.core.encrypt(bytes(message))
            # A generic stream may take a cancelled send_all partly (trio's contract): once
            # sealed, the frame goes out whole.
            with trio.CancelScope(shield=True):
                await self._write_raw(frame)
        finally:
            self._send_lock.release()

    async def receive_message(self) -> bytes:
        """The next whole message; raises :class:`trio.EndOfChannel` once the peer ended."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        self._receiving = True
        try:
            filled = False  # reading from the raw stream already was a checkpoint
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                msg = self.core.next_message()
                if msg is not None:
                    if not filled:
                        await trio.lowlevel.checkpoint()
                    return msg
                if self._eof:
                    if not filled:
                        await trio.lowlevel.checkpoint()
                    raise trio.EndOfChannel
                if not await self._fill():
                    self._eof = True
                filled = True
        finally:
            self._receiving = False

    def can_send_nowait(self) -> bool:
        """:meth:`send_message_nowait` would send now (see there)."""
        push = self._push
        return (not self._closed and push is not None and not self._send_lock.locked()
                and push.can_send_nowait())

    def send_message_nowait(self, message: bytes) -> bool:
        """Send one message without yielding when that is possible now (a raw stream that
        takes writes synchronously, no other sender, send buffer not full); False when it is
        not, and nothing was sent. Raises like :meth:`send_message`."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        push = self._push
        if push is None or self._send_lock.locked() or not push.can_send_nowait():
            return False
        push.send_nowait(self.core.encrypt(message))
        self._last_write = trio.current_time()
        return True

    async def deliver(self, on_message: Callable[[bytes], None]) -> None:
        """Call ``on_message(message)`` for each message until the peer ends the stream
        (then return). Over a raw stream that supports it, messages are delivered straight
        from the network's receive path, without a task switch; ``on_message`` must then not
        block. Raises like :meth:`receive_message`, and re-raises what ``on_message`` raised.
        """
        push = self._push
        if push is None or not self.core.open:
            while True:
                try:
                    msg = await self.receive_message()
                except trio.EndOfChannel:
                    return
                on_message(msg)
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        self._receiving = True
        self._on_message = on_message
        self._delivered = trio.Event()
        self._deliver_error = None
        try:
            push.set_reader(self._pump)
            try:
                self._pump()
                await self._delivered.wait()
            finally:
                push.set_reader(None)
            if self._deliver_error is not None:
                raise self._deliver_error
        finally:
            self._on_message = None
            self._receiving = False

    def _pump(self) -> None:
        """The raw stream's reader callback: decrypt and deliver what arrived."""
        push, on_message = self._push, self._on_message
        if push is None or on_message is None or self._delivered.is_set():
            return
        core = self.core
        try:
            while (msg := core.next_message()) is not None:
                on_message(msg)
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                data = push.receive_nowait(65536)
                if data is None:
                    return
                if not data:
                    self._eof = True
                    self._delivered.set()
                    return
                try:
                    core.receive_data(data)
                except SecretStreamError as exc:
                    self._abort_raw()
                    raise trio.BrokenResourceError(str(exc)) from exc
                while (msg := core.next_message()) is not None:
                    on_message(msg)
        except Exception as exc:  # handed to the delivering task, which raises it
            self._deliver_error = exc
            self._delivered.set()

    async def messages(self) -> AsyncIterator[bytes]:
        """Iterate over whole messages until the peer ends the stream."""
        while True:
            try:
                yield await self.receive_message()
            except trio.EndOfChannel:
                return

    async def send_keepalive(self) -> None:
        await self.send_message(b"")

    async def run_keepalive(self) -> None:
        """Send an empty message whenever nothing was written for ``keepalive`` seconds.

        Run it in a nursery; it returns once the stream is closed or broken.
        """
        if not self.keepalive:
            return
        while not self._closed:
            with trio.move_on_at(self._last_write + self.keepalive):
                await self._closed_event.wait()
                return
            if trio.current_time() >= self._last_write + self.keepalive:
                try:
                    await self.send_keepalive()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return

    # ---------------------------------------------------------------- unordered datagrams

    def send(self, message: bytes) -> None:
        """Send one unordered, unreliable datagram (needs a UDX raw stream)."""
        if not isinstance(self.raw, _MessageTransport):
            raise TypeError("unordered datagrams need a raw stream with send_message")
        self.raw.send_message(self.core.box_datagram(bytes(message)))

    async def receive_datagram(self) -> bytes:
        """Next unordered datagram that authenticates; others are dropped silently."""
        if not isinstance(self.raw, _MessageTransport):
            raise TypeError("unordered datagrams need a raw stream with receive_message")
        while True:
            envelope = await self.raw.receive_message()
            plain = self.core.open_datagram(envelope)
            if plain is not None:
                return plain

    # ---------------------------------------------------------------- trio.abc.HalfCloseableStream

    @contextlib.contextmanager
    def _stream_send(self) -> Iterator[None]:
        # The byte-stream API follows trio's contract: a second concurrent send_all,
        # wait_send_all_might_not_block or send_eof raises BusyResourceError. (The message API
        # queues concurrent senders instead: protomux and the keepalive share the stream.)
        if self._stream_sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._stream_sending = True
        try:
            yield
        finally:
            self._stream_sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Each call is one message (larger writes are split at :data:`MAX_MESSAGE`)."""
        with self._stream_send():
            data = bytes(data)
            if not data:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                await trio.lowlevel.checkpoint()
                return
            for i in range(0, len(data), MAX_MESSAGE):
                await self.send_message(data[i:i + MAX_MESSAGE])

    async def wait_send_all_might_not_block(self) -> None:
        with self._stream_send():
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            await self.raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if not self._leftover:
            try:
                self._leftover = await self.receive_message()
            except trio.EndOfChannel:
                return b""
        else:
            await trio.lowlevel.checkpoint()
        n = max_bytes or len(self._leftover)
        out, self._leftover = self._leftover[:n], self._leftover[n:]
        return out

    async def send_eof(self) -> None:
        with self._stream_send():
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            async with self._send_lock:
                await self.raw.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        self._closed_event.set()
        if self._on_message is not None and not self._delivered.is_set():
            self._deliver_error = trio.ClosedResourceError("stream is closed")
            self._delivered.set()
        await self.raw.aclose()


@asynccontextmanager
async def open_secret_stream(raw: trio.abc.HalfCloseableStream, is_initiator: bool,
                             handshake: HandshakeResult | None = None, *,
                             static_key_pair: KeyPair | None = None,
                             keepalive: float | None = DEFAULT_KEEPALIVE
                             ) -> AsyncIterator[SecretStream]:
    """Start a :class:`SecretStream`, keep it alive while the block runs, then close it."""
    stream = SecretStream(raw, is_initiator, handshake, static_key_pair=static_key_pair,
                          keepalive=keepalive)
    async with trio.open_nursery() as nursery:
        try:
            await stream.start()
            nursery.start_soon(stream.run_keepalive)
            yield stream
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await stream.aclose()
