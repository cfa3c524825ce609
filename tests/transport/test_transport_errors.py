"""The transport's exception tree has one root: ``except TransportError`` catches the transport.

Every exception class any ``p2p_transport`` module defines descends from
:class:`p2p_transport.errors.TransportError`, and the h11 split (peer's fault / our fault) sits
right beneath it. Streams keep trio's contract (``BrokenResourceError`` with the transport error
as its cause), which the stream tests check.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import p2p_transport
from p2p_transport import cenc, crypto, rpc
from p2p_transport.dht_rpc import node
from p2p_transport.dht_rpc.query import QueryError
from p2p_transport.errors import LocalProtocolError, RemoteProtocolError, TransportError
from p2p_transport.hyperdht.dht import PeerNotFound
from p2p_transport.udx import core


def _transport_modules() -> list[str]:
    names = [p2p_transport.__name__]
    for info in pkgutil.walk_packages(p2p_transport.__path__, prefix="p2p_transport."):
        if info.name.endswith("__main__"):
            continue  # running it would start the command line
        names.append(info.name)
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _transport_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("p2p_transport"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_the_walk_finds_the_known_classes() -> None:
    found = _exception_classes()
    # Guards the walk itself: a walk that imported nothing would pass the next test vacuously.
    for cls in (cenc.DecodeError, crypto.CryptoError, core.StreamReset, node.RequestTimeout,
                QueryError, rpc.RpcError, PeerNotFound):
        assert f"{cls.__module__}.{cls.__qualname__}" in found
    assert len(found) >= 20


@pytest.mark.parametrize("name", sorted(_exception_classes()))
def test_every_transport_exception_descends_from_the_root(name: str) -> None:
    assert issubclass(_exception_classes()[name], TransportError), name


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (cenc.DecodeError, RemoteProtocolError),
        (cenc.EncodeError, LocalProtocolError),
        (cenc.EncodeError, ValueError),  # the built-in contract of a bad argument stays
        (core.StreamError, TransportError),
        (node.DhtError, TransportError),
        (rpc.RpcError, TransportError),
        (rpc.RpcProtocolError, RemoteProtocolError),
        (crypto.CryptoError, TransportError),
    ],
)
def test_the_split_beneath_the_root(cls: type[BaseException], parent: type[BaseException]) -> None:
    assert issubclass(cls, parent)


def test_the_split_is_exclusive() -> None:
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    # The names every layer already imports from cenc are the same classes.
    assert cenc.RemoteProtocolError is RemoteProtocolError
    assert cenc.LocalProtocolError is LocalProtocolError
    assert p2p_transport.TransportError is TransportError


def test_one_clause_catches_a_decoder_and_a_stream_failure() -> None:
    caught = []
    for exc in (cenc.DecodeError("short"), core.StreamTimeout("silent"), node.RequestTimeout()):
        try:
            raise exc
        except TransportError as e:
            caught.append(e)
    assert len(caught) == 3
