"""The private PyNaCl API behind ``p2p_transport._sodium``: fails loudly if it changes."""

from __future__ import annotations

import os

import nacl.bindings as sodium
import pytest

from p2p_transport import _sodium


def _states() -> tuple[sodium.crypto_secretstream_xchacha20poly1305_state,
                       sodium.crypto_secretstream_xchacha20poly1305_state]:
    key = os.urandom(32)
    push = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(push, key)
    pull = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(pull, header, key)
    return push, pull


MESSAGES = [b"", b"hello", os.urandom(1000), os.urandom(_sodium.SCRATCH),
            os.urandom(_sodium.SCRATCH + 1)]


def test_the_private_handles_are_still_there() -> None:
    assert _sodium.PRIVATE_API, (
        "PyNaCl no longer exposes nacl._sodium.ffi/lib with the secretstream functions, or its "
        "secretstream state lost `statebuf`: p2p_transport._sodium now runs on the slower "
        "public bindings. Update p2p_transport/_sodium.py for this PyNaCl version.")


@pytest.fixture(params=[True, False], ids=["private", "public"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param and not _sodium.PRIVATE_API:
        pytest.fail("the private API is gone (see test_the_private_handles_are_still_there)")
    monkeypatch.setattr(_sodium, "PRIVATE_API", request.param)
    return bool(request.param)


def test_sealed_frames_open_with_the_public_bindings(api: bool) -> None:
    push, pull = _states()
    sealer = _sodium.StreamSealer(push)
    for message in MESSAGES:
        frame = sealer.seal_frame(message)
        assert int.from_bytes(frame[:3], "little") == len(frame) - 3 == len(message) + 17
        plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(pull, frame[3:])
        assert plain == message and tag == _sodium.TAG_MESSAGE


def test_public_ciphertexts_open_and_forgeries_do_not(api: bool) -> None:
    push, pull = _states()
    opener = _sodium.StreamOpener(pull)
    for message in MESSAGES:
        assert opener.open(sodium.crypto_secretstream_xchacha20poly1305_push(push, message)) \
            == message
    forged = bytearray(sodium.crypto_secretstream_xchacha20poly1305_push(push, b"x" * 40))
    forged[-1] ^= 1
    assert opener.open(bytes(forged)) is None
    assert opener.open(b"short") is None



def test_no_other_production_module_imports_private_or_testing_apis() -> None:
    """``nacl._sodium`` only through ``p2p_transport._sodium``; ``trio.testing`` nowhere."""
    import ast
    from pathlib import Path

    root = Path(_sodium.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                private = name.startswith("nacl._") and path.name != "_sodium.py"
                if private or name.startswith("trio.testing"):
                    offenders.append(f"{path.relative_to(root)}: {name}")
    assert offenders == []
