"""Stand-ins for the two credential services a device meets, served from the test process.

IotCredentialsServer speaks AWS IoT's credentials provider: HTTPS that requires a client
certificate signed by the test CA (tests/transports/iot_fixtures.py), GET
/role-aliases/{alias}/credentials with the thing name in `x-amzn-iot-thingname`, which must be the
certificate's own thing (its common name, here), as IoT checks the certificate is attached to it.
Unknown aliases and a stranger's thing name get 403, as from AWS.

TesServer speaks Greengrass's Token Exchange Service: plain HTTP on loopback, the token in the
Authorization header, the ECS container-credentials answer.
"""
from __future__ import annotations

import collections
import datetime
import http.server
import json
import ssl
import threading

from tests.transports.iot_fixtures import Pki

GARBLED_ALIAS = "garbled"  # this alias is answered 200 with a body that is not JSON


def stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class _Server:
    """A threaded HTTP server on a free loopback port, counting what it was asked."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True,
                                       name=type(self).__name__)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, **request) -> int:
        with self.lock:
            self.requests.append(request)
            return len(self.requests)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)


class _JsonHandler(http.server.BaseHTTPRequestHandler):
    timeout = 10

    def log_message(self, format, *args):  # keep pytest's output for failures
        pass

    def answer(self, status: int, body) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _IotHandler(_JsonHandler):
    def do_GET(self):
        server: IotCredentialsServer = self.server.owner
        peer = dict(pair[0] for pair in (self.connection.getpeercert() or {}).get("subject", ()))
        thing = self.headers.get("x-amzn-iot-thingname")
        parts = self.path.split("/")
        alias = parts[2] if len(parts) == 4 and parts[1] == "role-aliases" and parts[3] == "credentials" else None
        number = server.record(path=self.path, thing=thing, certificate=peer.get("commonName"), alias=alias)
        if alias is None:
            return self.answer(404, {"message": "Not Found"})
        if not thing:
            return self.answer(400, {"message": "Missing thing name"})
        if thing != peer.get("commonName") or alias not in server.aliases:
            return self.answer(403, {"message": "Access Denied"})
        if alias == GARBLED_ALIAS:
            return self.answer(200, b'{"credentials": {"accessKeyId": "ASIA-half-a-secret')
        return self.answer(200, {"credentials": server.issue(number)})


class IotCredentialsServer(_Server):
    """AWS IoT's credentials provider on 127.0.0.1, mTLS with the test CA.

    `expirations` is a queue of expiry times for the next answers (then now + `lifetime`);
    `issued` holds every answer's credentials, in order.
    """

    def __init__(self, pki: Pki, aliases=("neo-s3-role", GARBLED_ALIAS), client_certificate: bool = True):
        super().__init__(_IotHandler)
        self.aliases = set(aliases)
        self.expirations: collections.deque[datetime.datetime] = collections.deque()
        self.lifetime = datetime.timedelta(hours=1)
        self.issued: list[dict] = []
        self.refused_handshakes = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED if client_certificate else ssl.CERT_NONE
        # The handshake happens in the request's own thread (below), so a client that fails it
        # cannot stall the accepting loop.
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.httpd.finish_request = self._finish_request
        self.httpd.handle_error = lambda request, address: None
        self.endpoint = f"127.0.0.1:{self.port}"

    def _finish_request(self, request, client_address) -> None:
        try:
            request.settimeout(10)
            request.do_handshake()
        except (ssl.SSLError, OSError):
            with self.lock:
                self.refused_handshakes += 1
            return
        _IotHandler(request, client_address, self.httpd)

    def issue(self, number: int) -> dict:
        with self.lock:
            expiry = self.expirations.popleft() if self.expirations else now() + self.lifetime
            credentials = {"accessKeyId": f"ASIAIOT{number:05d}", "secretAccessKey": f"iot-secret-{number}",
                           "sessionToken": f"iot-token-{number}", "expiration": stamp(expiry)}
            self.issued.append(credentials)
            return credentials


class _TesHandler(_JsonHandler):
    def do_GET(self):
        server: TesServer = self.server.owner
        token = self.headers.get("Authorization")
        number = server.record(path=self.path, authorization=token)
        if token != server.token:
            return self.answer(401, {"message": "Invalid token"})
        return self.answer(200, {"AccessKeyId": f"ASIATES{number:05d}", "SecretAccessKey": f"tes-secret-{number}",
                                 "Token": f"tes-token-{number}", "Expiration": stamp(now() + datetime.timedelta(hours=1))})


class TesServer(_Server):
    """Greengrass's Token Exchange Service on loopback HTTP; `uri` is what Greengrass would set."""

    def __init__(self, token: str = "greengrass-auth-token"):
        super().__init__(_TesHandler)
        self.token = token
        self.uri = f"http://127.0.0.1:{self.port}/2016-11-01/credentialprovider/"
