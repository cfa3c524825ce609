"""The one place where p2p_transport uses a private PyNaCl API: ``nacl._sodium``.

Why. secret-stream seals and opens every message with libsodium's
``crypto_secretstream_xchacha20poly1305``. PyNaCl's public ``nacl.bindings`` functions for it
check their arguments and allocate a new output buffer on every call, which costs a few
microseconds per message on the request path. Here the same libsodium functions are called
through the cffi handles PyNaCl itself uses (``nacl._sodium.ffi`` / ``lib``), sealing into and
opening from buffers kept per stream, with the public state objects
(``nacl.bindings.crypto_secretstream_xchacha20poly1305_state``, their ``statebuf``).

If a PyNaCl release moves or changes these handles, :data:`PRIVATE_API` is False and the
classes below use the public bindings instead (the same bytes, slower);
``tests/transport/test_sodium_private.py`` fails loudly in that case, so the change is
noticed rather than silently slowing the transport down. The pinned PyNaCl version is in
``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

import nacl.bindings as sodium
import nacl.exceptions

__all__ = ["ABYTES", "PRIVATE_API", "StreamOpener", "StreamSealer"]

ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
#: Messages up to this size are sealed and opened in buffers kept per stream.
SCRATCH = 64 * 1024

_ffi: Any = None
_lib: Any = None
try:
    import nacl._sodium as _private

    _ffi, _lib = _private.ffi, _private.lib
    PRIVATE_API = all(hasattr(_lib, name) for name in (
        "crypto_secretstream_xchacha20poly1305_push",
        "crypto_secretstream_xchacha20poly1305_pull",
    )) and hasattr(sodium.crypto_secretstream_xchacha20poly1305_state(), "statebuf")
except (ImportError, AttributeError):  # pragma: no cover - a PyNaCl without the private module
    PRIVATE_API = False

State = sodium.crypto_secretstream_xchacha20poly1305_state


class StreamSealer:
    """Seals messages with one push state into uint24-framed ciphertexts."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._buf: Any = _ffi.new("unsigned char[]", 3 + SCRATCH + ABYTES) if PRIVATE_API else None

    def seal_frame(self, message: bytes) -> bytes:
        """``uint24 LE length || ciphertext`` of ``message`` (at most 2**24 - 1 - ABYTES)."""
        mlen = len(message)
        clen = mlen + ABYTES
        if not PRIVATE_API:
            return clen.to_bytes(3, "little") + sodium.crypto_secretstream_xchacha20poly1305_push(
                self._state, message, None, TAG_MESSAGE)
        out = self._buf if mlen <= SCRATCH else _ffi.new("unsigned char[]", 3 + clen)
        rc = _lib.crypto_secretstream_xchacha20poly1305_push(
            self._state.statebuf, out + 3, _ffi.NULL, message, mlen, _ffi.NULL, 0, TAG_MESSAGE)
        if rc != 0:
            raise RuntimeError("secretstream push failed")
        out[0] = clen & 0xFF
        out[1] = clen >> 8 & 0xFF
        out[2] = clen >> 16
        return bytes(_ffi.buffer(out, 3 + clen))


class StreamOpener:
    """Opens ciphertexts with one pull state."""

    def __init__(self, state: State) -> None:
        self._state = state
        if PRIVATE_API:
            self._buf = _ffi.new("unsigned char[]", SCRATCH)
            self._tag = _ffi.new("unsigned char *")

    def open(self, ciphertext: bytes) -> bytes | None:
        """The plaintext, or None when the ciphertext does not authenticate (or is shorter
        than :data:`ABYTES`)."""
        n = len(ciphertext)
        if n < ABYTES:
            return None
        if not PRIVATE_API:
            try:
                plain, _tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                    self._state, ciphertext, None)
            except nacl.exceptions.RuntimeError:
                return None
            return bytes(plain)
        mlen = n - ABYTES
        out = self._buf if mlen <= SCRATCH else _ffi.new("unsigned char[]", mlen)
        rc = _lib.crypto_secretstream_xchacha20poly1305_pull(
            self._state.statebuf, out, _ffi.NULL, self._tag, ciphertext, n, _ffi.NULL, 0)
        if rc != 0:
            return None
        return bytes(_ffi.buffer(out, mlen))
