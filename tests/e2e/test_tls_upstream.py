"""An HTTPS upstream (the real backend is one): the socket-level body reader over TLS."""

import datetime
import ipaddress
import ssl

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fake_upstream import FakeUpstream, Script
from tests.helpers import Gateway


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    fake = FakeUpstream(tls_context=context).start()
    fake.cert_path = str(cert_path)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def tls_gateway(tls_upstream, tmp_path_factory):
    gateway = Gateway(tmp_path_factory.mktemp("tls-gateway"), tls_upstream.base_url,
                      env={"REQUESTS_CA_BUNDLE": tls_upstream.cert_path, "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    gateway.start()
    gateway.import_account(last_refresh="2099-01-01T00:00:00Z")
    gateway.key = gateway.create_key()
    yield gateway
    gateway.stop()


def ask(gateway, stream, **body):
    return requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {gateway.key}"},
                         json={"model": "gpt-5.2", "input": "hi", "stream": stream, **body}, timeout=30, stream=stream)


def test_answers_come_through_tls_streaming_and_not(tls_gateway, tls_upstream):
    tls_upstream.reset()
    script = Script().start().message(["over ", "TLS"]).completed()
    tls_upstream.push({"events": script.events()})
    reply = ask(tls_gateway, False)
    assert reply.status_code == 200 and reply.json()["output"][0]["content"][0]["text"] == "over TLS"

    tls_upstream.push({"events": Script().start().message(["streamed"] * 50).completed().events()})
    with ask(tls_gateway, True) as reply:
        text = reply.content.decode()
    assert reply.status_code == 200
    assert text.count("event: response.output_text.delta") == 50
    assert text.rstrip().split("\n\n")[-1].startswith("event: response.completed")


def test_keepalives_and_a_cut_over_tls(tls_gateway, tls_upstream):
    tls_upstream.reset()
    tls_upstream.push({"stall_at": 3, "stall": 2.5})
    with ask(tls_gateway, True) as reply:
        text = reply.content.decode()
    assert ": keepalive" in text and "event: response.completed" in text

    tls_upstream.push({"cut_after": 5})
    with ask(tls_gateway, True) as reply:
        text = reply.content.decode()
    assert text.rstrip().split("\n\n")[-1].startswith("event: response.failed")
