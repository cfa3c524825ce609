"""Tether's RPC runtime: typed unary and server-streaming calls as framed
``tether.v1.RpcFrame`` messages over any message stream (an in-memory pair, a
length-prefixed byte stream, or a protomux channel over Hyperswarm).

Stubs and servicer bases are generated from ``proto/`` into
``tether/v1/*_rpc.py`` by ``tools/protoc_gen_tether.py``.
"""

from tether.rpc.connection import (
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_CONCURRENT_CALLS,
    ResponseStream,
    RpcConnection,
    open_connection,
)
from tether.rpc.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameTooLarge,
    LengthPrefixedStream,
    MemoryMessageStream,
    MessageStream,
    memory_message_stream_pair,
)
from tether.rpc.service import (
    Encoded,
    Handler,
    MethodSpec,
    Responses,
    ServerContext,
    collect_handlers,
)
from tether.rpc.status import RpcError, RpcProtocolError, StatusCode
from tether.rpc.stubs import TypedResponseStream, decode_response

__all__ = [
    "DEFAULT_INITIAL_WINDOW",
    "DEFAULT_MAX_CONCURRENT_CALLS",
    "DEFAULT_MAX_FRAME_SIZE",
    "Encoded",
    "FrameTooLarge",
    "Handler",
    "LengthPrefixedStream",
    "MemoryMessageStream",
    "MessageStream",
    "MethodSpec",
    "ResponseStream",
    "Responses",
    "RpcConnection",
    "RpcError",
    "RpcProtocolError",
    "ServerContext",
    "StatusCode",
    "TypedResponseStream",
    "collect_handlers",
    "decode_response",
    "memory_message_stream_pair",
    "open_connection",
]
