"""An AWS IoT Core stand-in for the tests: a real Mosquitto broker with an mTLS listener.

AWS IoT Core cannot run here. What the agent depends on from it is MQTT 5 over TLS with a
client certificate, so the tests generate a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate for the thing (the `cryptography` package), and give
Mosquitto a TLS listener that requires a client certificate signed by that CA. The broker's
plain loopback listener is for the test's own clients (the Jobs stand-in, requesters).

Fixtures: `pki` (the files), `iot_broker` (the broker, `.tls_port` for the agent),
`iot_settings` (IotCoreConfig for the thing, fast reconnects).
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import IotCoreConfig
from tests.mosquitto import Mosquitto, free_port

THING = "neo-thing-1"
VALIDITY = datetime.timedelta(days=1)


@dataclasses.dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA: the broker must refuse it
    stranger_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca_cert, ca_key, common_name: str, server: bool):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca("neo-agent test CA")
    server_cert, server_key = _leaf(ca_cert, ca_key, "localhost", server=True)
    client_cert, client_key = _leaf(ca_cert, ca_key, THING, server=False)
    other_cert, other_key = _ca("someone else's CA")
    stranger_cert, stranger_key = _leaf(other_cert, other_key, THING, server=False)
    return Pki(
        ca=_write(directory / "ca.pem", cert=ca_cert),
        server_cert=_write(directory / "server.pem", cert=server_cert),
        server_key=_write(directory / "server.key", key=server_key),
        client_cert=_write(directory / "thing.pem", cert=client_cert),
        client_key=_write(directory / "thing.key", key=client_key),
        stranger_cert=_write(directory / "stranger.pem", cert=stranger_cert),
        stranger_key=_write(directory / "stranger.key", key=stranger_key),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_listener(port: int, pki: Pki) -> list[str]:
    """Mosquitto lines for an mTLS listener: a client certificate from our CA is required."""
    return [
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
        "use_identity_as_username true",
    ]


@pytest.fixture
def iot_broker(tmp_path, pki):
    """A broker with a plain listener (`.port`, for the test's clients) and an mTLS one (`.tls_port`)."""
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "mosquitto", extra_config=tls_listener(tls_port, pki))
    broker.tls_port = tls_port
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def iot_settings(iot_broker, pki) -> IotCoreConfig:
    """The thing's IoT Core settings against the test broker, with quick reconnects."""
    return IotCoreConfig(
        endpoint="127.0.0.1", port=iot_broker.tls_port, thing_name=THING, cert=str(pki.client_cert),
        key=str(pki.client_key), ca=str(pki.ca), min_reconnect_s=0.2, max_reconnect_s=1.0,
        connect_timeout_s=10.0, jobs_progress_interval_s=1.0,
    )
