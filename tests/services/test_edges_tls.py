"""TLS on the gateway's edges: HTTPS and gRPC over TLS with a certificate made for the
test, checked by clients that trust only that certificate; a plaintext client and a
client that does not trust it get nowhere; bad flag combinations stop the gateway.

Real sockets and grpcio's threads, so the real clock; the fleet is the in-memory double."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.grpc_edge import GrpcEdge
from gateway.http import HttpApi, serve_http
from gateway.main import Tls
from tests.services.harness import MODEL, fleet, wall_ms
from tether import blocking
from tether.v1 import services_pb2, services_pb2_grpc


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


def https_get(url: str, token: str, context: ssl.SSLContext | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def grpc_models(port: int, token: str, root: bytes | None) -> object:
    address = f"127.0.0.1:{port}"
    channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(root))
               if root is not None else grpc.insecure_channel(address))
    with channel:
        stub = services_pb2_grpc.GatewayStub(channel)
        try:
            listed = stub.ListModels(services_pb2.ListModelsRequest(),
                                     metadata=[("authorization", f"Bearer {token}")], timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return [m.model.model_id for m in listed.models]


def test_https_and_grpc_over_tls(tmp_path: Path) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    tls = Tls.load(str(cert_file), str(key_file))
    assert tls is not None
    trusting = ssl.create_default_context(cafile=str(cert_file))

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms) as f, trio.open_nursery() as nursery:
            token = f.store.issue_token("acme")
            http_port = await nursery.start(
                lambda task_status: serve_http(
                    HttpApi(f.gateway_service), "127.0.0.1", 0,
                    ssl_context=tls.ssl_context(), task_status=task_status))
            grpc_port = await nursery.start(
                GrpcEdge(f.gateway_service, "127.0.0.1", 0, tls=tls.grpc_pair()).run)
            url = f"https://127.0.0.1:{http_port}/v1/models"
            status, body = await trio.to_thread.run_sync(https_get, url, token, trusting)
            assert status == 200 and [m["id"] for m in body["data"]] == [f"{MODEL}@1.0"]
            # A client that does not trust the certificate, or speaks plaintext, fails.
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                await trio.to_thread.run_sync(
                    https_get, url, token, ssl.create_default_context())
            with pytest.raises((ConnectionError, urllib.error.URLError)):
                await trio.to_thread.run_sync(
                    https_get, f"http://127.0.0.1:{http_port}/v1/models", token, None)
            got = await trio.to_thread.run_sync(
                grpc_models, grpc_port, token, cert_file.read_bytes())
            assert got == [MODEL]
            plain = await trio.to_thread.run_sync(grpc_models, grpc_port, token, None)
            assert plain == grpc.StatusCode.UNAVAILABLE
            nursery.cancel_scope.cancel()

    with blocking.inline():
        trio.run(main)


def test_tls_flags_are_checked_before_the_gateway_starts(tmp_path: Path) -> None:
    cert_file, _ = make_certificate(tmp_path)
    assert Tls.load(None, None) is None
    with pytest.raises(SystemExit, match="go together"):
        Tls.load(str(cert_file), None)
    with pytest.raises(SystemExit, match="cannot load"):
        Tls.load(str(cert_file), str(tmp_path / "missing.pem"))
    (tmp_path / "other.pem").write_bytes(another_key())
    with pytest.raises(SystemExit, match="cannot load"):
        Tls.load(str(cert_file), str(tmp_path / "other.pem"))  # not this certificate's key


def another_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
