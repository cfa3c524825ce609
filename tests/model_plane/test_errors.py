"""The shared exception tree maps to and from ``tether.v1.Error``, and one ``StatusCode``."""

from __future__ import annotations

import pytest

from tether import errors
from tether.errors import (
    ERROR_CLASSES,
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StatusCode,
    TetherError,
    error_class,
)
from tether.rpc import status as rpc_status
from tether.v1 import status_pb2


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (InvalidArgument, status_pb2.STATUS_CODE_INVALID_ARGUMENT),
        (NotFound, status_pb2.STATUS_CODE_NOT_FOUND),
        (PermissionDenied, status_pb2.STATUS_CODE_PERMISSION_DENIED),
        (ResourceExhausted, status_pb2.STATUS_CODE_RESOURCE_EXHAUSTED),
        (DataLoss, status_pb2.STATUS_CODE_DATA_LOSS),
    ],
)
def test_round_trip_through_the_proto(cls: type[TetherError], code: int) -> None:
    err = cls("what went wrong", details={"digest": "ab"})
    proto = err.to_proto()
    assert (proto.code, proto.message, dict(proto.details)) == (code, "what went wrong",
                                                                 {"digest": "ab"})
    back = TetherError.from_proto(proto)
    assert type(back) is cls and back.code == code and back.details == {"digest": "ab"}
    assert cls.__name__ in repr(back) and back.code_name.startswith("STATUS_CODE_")


def test_there_is_one_status_code_and_it_is_the_protos() -> None:
    assert rpc_status.StatusCode is StatusCode
    assert {f"STATUS_CODE_{c.name}": c.value for c in StatusCode} == dict(
        status_pb2.StatusCode.items()
    )


@pytest.mark.parametrize("code", [c for c in StatusCode if c not in (StatusCode.OK,
                                                                      StatusCode.UNKNOWN)])
def test_every_error_code_has_its_subclass(code: StatusCode) -> None:
    cls = error_class(code)
    assert cls is not TetherError and cls.default_code is code
    assert getattr(errors, cls.__name__) is cls
    back = TetherError.from_proto(status_pb2.Error(code=code.value, message="x"))
    assert type(back) is cls and back.code is code


def test_unknown_codes_stay_generic() -> None:
    assert set(ERROR_CLASSES) == set(StatusCode) - {StatusCode.OK, StatusCode.UNKNOWN}
    for code in (status_pb2.STATUS_CODE_UNKNOWN, 99):
        back = TetherError.from_proto(status_pb2.Error(code=code, message="x"))  # type: ignore[arg-type]
        assert type(back) is TetherError and back.code is StatusCode.UNKNOWN
