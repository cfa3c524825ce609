"""dht-rpc: the UDP RPC and Kademlia layer of the Hyperswarm DHT."""

from .io import PendingRequest, RequestIO, TokenSecrets
from .messages import (
    DELAYED_PING,
    DOWN_HINT,
    FIND_NODE,
    INVALID_TOKEN,
    PING,
    PING_NAT,
    UNKNOWN_COMMAND,
    DhtRpcProtocolError,
    Request,
    Response,
    decode_message,
    encode_request,
    encode_response,
    is_dht_rpc,
    node_id,
)
from .node import DhtError, DhtNode, IncomingRequest, RemoteError, RequestTimeout
from .query import QueryError, QueryReply, QueryResult, auto_commit, query
from .routing import K, Node, RoutingTable, distance
from .socket import DatagramTransport, UdpSocket

__all__ = [
    "DELAYED_PING",
    "DOWN_HINT",
    "FIND_NODE",
    "INVALID_TOKEN",
    "PING",
    "PING_NAT",
    "UNKNOWN_COMMAND",
    "DatagramTransport",
    "DhtError",
    "DhtNode",
    "DhtRpcProtocolError",
    "IncomingRequest",
    "K",
    "Node",
    "PendingRequest",
    "QueryError",
    "QueryReply",
    "QueryResult",
    "RemoteError",
    "Request",
    "RequestIO",
    "RequestTimeout",
    "Response",
    "RoutingTable",
    "TokenSecrets",
    "UdpSocket",
    "auto_commit",
    "decode_message",
    "distance",
    "encode_request",
    "encode_response",
    "is_dht_rpc",
    "node_id",
    "query",
]
