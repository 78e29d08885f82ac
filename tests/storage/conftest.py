"""Fixtures for the storage tests: the credential services a device meets, with the IoT test PKI;
an S3 server that forgets uploads as AWS does (tests/storage/aws_like_s3.py)."""
from __future__ import annotations

import pytest

from tests.storage.aws_like_s3 import aws_like_s3, aws_like_s3_server  # noqa: F401  (fixtures)
from tests.storage.credential_servers import IotCredentialsServer, TesServer
from tests.transports.iot_fixtures import pki  # noqa: F401  (fixture: the test CA, server and thing certificates)


@pytest.fixture
def iot_server(pki):  # noqa: F811
    """AWS IoT's credentials provider, requiring the thing's certificate."""
    server = IotCredentialsServer(pki).start()
    yield server
    server.stop()


@pytest.fixture
def tes_server():
    """Greengrass's Token Exchange Service on loopback."""
    server = TesServer().start()
    yield server
    server.stop()
