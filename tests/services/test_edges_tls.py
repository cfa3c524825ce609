"""TLS on the gateway's edges: HTTPS and gRPC over TLS with a certificate made for the
test, checked by clients that trust only that certificate; a plaintext client and a
client that does not trust it get nowhere; bad flag combinations stop the gateway.
Mutual TLS: with a client CA, a client with a certificate that CA signed is served, one
with another CA's certificate or with none is not, on both edges.

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
import openai
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

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(
    folder: Path, name: str, issuer: Issuer | None = None
) -> tuple[Path, Path, Issuer]:
    """A certificate for 127.0.0.1 (NAME.pem, NAME-key.pem), signed by ``issuer`` or by
    itself (then it is also a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tether-test-{name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                       critical=True)
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file, (cert, key)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, cert-key.pem)."""
    cert_file, key_file, _ = issue(folder, "cert")
    return cert_file, key_file


def https_get(url: str, token: str, context: ssl.SSLContext | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sdk_models_over_http2(base_url: str, token: str, context: ssl.SSLContext) -> Any:
    http = openai.DefaultHttpxClient(http2=True, verify=context)
    with openai.OpenAI(base_url=base_url, api_key=token, http_client=http) as client:
        return client.models.with_raw_response.list()


def grpc_models(
    port: int, token: str, root: bytes | None, client: tuple[Path, Path] | None = None
) -> object:
    address = f"127.0.0.1:{port}"
    key, chain = (client[1].read_bytes(), client[0].read_bytes()) if client else (None, None)
    channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(root, key, chain))
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
            # The official SDK over HTTP/2 (chosen by ALPN).
            base = f"https://127.0.0.1:{http_port}/v1"
            raw = await trio.to_thread.run_sync(sdk_models_over_http2, base, token, trusting)
            assert raw.http_response.http_version == "HTTP/2"
            assert [m.id for m in raw.parse().data] == [f"{MODEL}@1.0"]
            got = await trio.to_thread.run_sync(
                grpc_models, grpc_port, token, cert_file.read_bytes())
            assert got == [MODEL]
            plain = await trio.to_thread.run_sync(grpc_models, grpc_port, token, None)
            assert plain == grpc.StatusCode.UNAVAILABLE
            nursery.cancel_scope.cancel()

    with blocking.inline():
        trio.run(main)


def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_ca(tmp_path: Path) -> None:
    server_cert, server_key, _ = issue(tmp_path, "server")
    ca_file, _, ca = issue(tmp_path, "ca")
    trusted = issue(tmp_path, "client", ca)[:2]
    untrusted = issue(tmp_path, "stranger", issue(tmp_path, "other-ca")[2])[:2]
    tls = Tls.load(str(server_cert), str(server_key), str(ca_file))
    assert tls is not None

    def https(client: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(server_cert))
        if client is not None:
            context.load_cert_chain(*client)
        return context

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms) as f, trio.open_nursery() as nursery:
            token = f.store.issue_token("acme")
            http_port = await nursery.start(
                lambda task_status: serve_http(
                    HttpApi(f.gateway_service), "127.0.0.1", 0,
                    ssl_context=tls.ssl_context(), task_status=task_status))
            grpc_port = await nursery.start(GrpcEdge(
                f.gateway_service, "127.0.0.1", 0, tls=tls.grpc_pair(),
                client_ca=tls.grpc_client_ca()).run)
            url = f"https://127.0.0.1:{http_port}/v1/models"
            status, body = await trio.to_thread.run_sync(https_get, url, token, https(trusted))
            assert status == 200 and [m["id"] for m in body["data"]] == [f"{MODEL}@1.0"]
            for client in (untrusted, None):
                # The handshake is refused: an alert or a closed connection, never an answer.
                with pytest.raises((ConnectionError, ssl.SSLError, urllib.error.URLError)):
                    await trio.to_thread.run_sync(https_get, url, token, https(client))
            root = server_cert.read_bytes()
            got = await trio.to_thread.run_sync(grpc_models, grpc_port, token, root, trusted)
            assert got == [MODEL]
            for client in (untrusted, None):
                refused = await trio.to_thread.run_sync(
                    grpc_models, grpc_port, token, root, client)
                assert refused == grpc.StatusCode.UNAVAILABLE
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
    with pytest.raises(SystemExit, match="needs --tls-cert"):
        Tls.load(None, None, str(cert_file))
    with pytest.raises(SystemExit, match="cannot load"):
        Tls.load(str(cert_file), str(tmp_path / "cert-key.pem"), str(tmp_path / "none.pem"))


def another_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
