"""The shared exception tree maps to and from ``tether.v1.Error``."""

from __future__ import annotations

import pytest

from tether.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TetherError,
)
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


def test_unknown_codes_stay_generic() -> None:
    back = TetherError.from_proto(status_pb2.Error(code=status_pb2.STATUS_CODE_ABORTED,
                                                   message="x"))
    assert type(back) is TetherError and back.code == status_pb2.STATUS_CODE_ABORTED
