"""An error received over an RPC is the ``TetherError`` subclass of its code.

A handler raises ``NotFound``; the caller catches ``NotFound`` (and the same object is an
``RpcError`` with its code, message and details), so no caller needs the message text to tell
errors apart. A handler's exception that merely has an integer ``code`` attribute is not taken
for a status: only a ``TetherError`` carries one.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import trio
import trio.testing

from tether import errors
from tether.errors import ERROR_CLASSES, NotFound, ResourceExhausted, StatusCode, Unavailable
from tether.rpc import (
    RpcError,
    RpcProtocolError,
    ServerContext,
    collect_handlers,
    memory_message_stream_pair,
    open_connection,
)
from tether.v1 import health_pb2, services_pb2, services_rpc


class CodedButNotTether(Exception):
    """Like a library's error with an integer ``code`` that means something else."""

    code = 5


class Worker(services_rpc.WorkerServicer):
    """Raises what the ``raise`` metadata names."""

    async def GetHealth(
        self, request: services_pb2.GetHealthRequest, context: ServerContext
    ) -> health_pb2.Health.Report:
        kind = context.metadata["raise"]
        if kind == "coded":
            raise CodedButNotTether("a library's own code")
        cls = getattr(errors, kind)
        if cls is ResourceExhausted:
            raise ResourceExhausted("queue full", details={"queue": "q"}, retry_after_s=2)
        raise cls(f"{kind} here", details={"where": "handler"})


async def call(kind: str) -> RpcError:
    client_end, server_end = memory_message_stream_pair()
    async with (
        open_connection(server_end, initiator=False, handlers=collect_handlers(Worker())),
        open_connection(client_end, initiator=True) as client,
    ):
        with pytest.raises(RpcError) as info:
            await services_rpc.WorkerStub(client).GetHealth(
                services_pb2.GetHealthRequest(), metadata={"raise": kind})
    return info.value


def run(kind: str) -> RpcError:
    return trio.run(call, kind, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=lambda c: c.__name__)
def test_a_received_error_is_the_subclass_of_its_code(cls: type[errors.TetherError]) -> None:
    got = run(cls.__name__)
    assert isinstance(got, cls) and isinstance(got, RpcError)
    assert got.code is cls.default_code
    assert got.message == f"{cls.__name__} here" or cls is ResourceExhausted
    if cls is ResourceExhausted:
        assert got.details == {"queue": "q", errors.RETRY_AFTER_MS: "2000"}
        assert errors.retry_after_s(got.details) == 2
    else:
        assert got.details == {"where": "handler"}


def test_a_caller_handles_a_remote_error_by_class() -> None:
    handled = ""
    try:
        raise run("NotFound")
    except Unavailable:
        handled = "unavailable"
    except NotFound:
        handled = "not found"
    assert handled == "not found"


def test_an_integer_code_attribute_is_not_a_status() -> None:
    got = run("coded")
    assert got.code is StatusCode.UNKNOWN and type(got) is RpcError
    assert "CodedButNotTether" in got.message


def test_locally_made_rpc_errors_are_typed_too() -> None:
    assert isinstance(RpcError(StatusCode.UNAVAILABLE, "connection closed"), Unavailable)
    assert type(RpcError(StatusCode.UNKNOWN, "?")) is RpcError
    assert type(RpcError(42, "?")) is RpcError  # outside the set: UNKNOWN
    protocol = RpcProtocolError("bad frame")
    assert isinstance(protocol, errors.Internal) and protocol.code is StatusCode.INTERNAL
    assert RpcError.from_exception(NotFound("gone")).code is StatusCode.NOT_FOUND


def test_a_typed_rpc_error_survives_pickling_and_copying() -> None:
    for code in (StatusCode.NOT_FOUND, StatusCode.UNKNOWN):
        error = RpcError(code, "gone", {"model_id": "m"})
        for again in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
            assert type(again) is type(error)
            assert (again.code, again.message, again.details) == (code, "gone", {"model_id": "m"})
    assert isinstance(copy.copy(RpcError(StatusCode.NOT_FOUND, "gone")), NotFound)
