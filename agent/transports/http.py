"""The SageMaker-protocol HTTP endpoint: boto3 and the AWS CLI talk to the agent unmodified.

    boto3.client("sagemaker", endpoint_url="http://127.0.0.1:8573")
    aws sagemaker list-compilation-jobs --endpoint-url http://127.0.0.1:8573

SageMaker speaks AWS's JSON 1.1 protocol, and so does this endpoint: `POST /` with
`X-Amz-Target: SageMaker.<Operation>` and a JSON body; the answer is 200 with the operation's
JSON output (times as epoch seconds), or an error status with `{"__type": code, "message": ...}`
and the code again in `x-amzn-ErrorType`. Every answer carries a fresh `x-amzn-RequestId`.
botocore turns these errors into `ClientError` with the same code, as it does for SageMaker.

Who may call: bound to a loopback address, anyone on this machine (the same trust as the
state directory's owner, since requests may name file:// paths); signatures are not checked,
but the Host header must name a loopback host, so a web page cannot reach the endpoint
through DNS rebinding. Bound anywhere else, every request must be SigV4-signed with one of the
configured keys (`agent.transports.sigv4`), and the endpoint refuses to start without keys.

The endpoint's own refusals, beside the API's errors (all on the ApiError branch):
SerializationException (400, a body that is not a JSON object), UnknownOperationException
(400 missing or unknown target, 404 a path other than /, 405 a method other than POST),
LengthRequired (411), RequestTooLargeException (413, checked before the body is read),
AccessDeniedException (403, a non-loopback Host on the loopback endpoint), the AuthErrors
(403), InternalFailure (500, with the cause in the agent's log).

TLS: with a certificate and key (`http_tls_cert`, `http_tls_key`) the endpoint speaks HTTPS only
(TLS 1.2 or later), for `--endpoint-url https://...` with the CA in boto3's `verify` or the AWS
CLI's `--ca-bundle`. The handshake happens in the connection's own thread, inside its request
deadline, so a client that never completes it holds one slot for at most REQUEST_DEADLINE_S.

One request per connection (HTTP/1.0 answers), so closing the listener is all it takes to stop
accepting work; requests already read are answered before `stop` returns.

Bounded under many clients: at most MAX_CONNECTIONS connections are served at once (one thread
each); the next ones wait in the listen backlog, then the kernel's. A client must send its whole
request within REQUEST_DEADLINE_S (and never pause REQUEST_TIMEOUT_S) or its connection is
closed, so idle or trickling connections cannot hold every slot.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import urlsplit

from agent.api.service import CompilationService
from agent.config import DEFAULT_HTTP
from agent.errors import AccessDeniedException, ApiError, ConfigError, SerializationException, UnknownOperationException
from agent.transports.sigv4 import ReplayGuard, SigV4Verifier

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB; a CreateCompilationJob body is a few KiB at most
CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
# Operations that change something: each signed request of these is accepted once (ReplayGuard);
# a captured Describe or List, replayed, only reads what the eavesdropper already saw.
ONCE_PER_SIGNATURE = frozenset({"CreateCompilationJob", "StopCompilationJob", "DeleteCompilationJob"})
REQUEST_TIMEOUT_S = 30.0  # a client that stalls mid-request loses its connection, not a thread forever
REQUEST_DEADLINE_S = 60.0  # and one that trickles a byte now and then: the whole request within this
MAX_CONNECTIONS = 64  # handled at once; more wait in the listen backlog until one ends
SERVE_POLL_S = 0.2  # how soon the accept loop notices stop()
LINGER_S, LINGER_MAX_BYTES = 1.0, 4 << 20  # a refused, unread body: how long and how much to discard


class LengthRequired(SerializationException):
    http_status = 411


class RequestTooLargeException(ApiError):
    code = "RequestTooLargeException"
    http_status = 413


class UnknownPath(UnknownOperationException):
    http_status = 404


class MethodNotAllowed(UnknownOperationException):
    http_status = 405


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:8573) as (host, port); a ConfigError naming the key otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"http (NEO_AGENT_HTTP, --http): expected HOST:PORT such as {DEFAULT_HTTP}, got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _host_is_loopback_name(header: str) -> bool:
    """For the DNS-rebinding check: the Host header names a loopback address or localhost."""
    host = urlsplit(f"//{header}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpTransport:
    """SageMaker's JSON protocol over HTTP, answered by `api` (made with agent.api_for("http")).

    `credentials` maps access key id -> secret. `require_signature` defaults to "bound to a
    non-loopback address"; tests force it on loopback to check signatures without a network.
    """

    name = "http"

    def __init__(
        self,
        api: CompilationService,
        address: str = DEFAULT_HTTP,
        *,
        credentials: Mapping[str, str] | None = None,
        require_signature: bool | None = None,
        tls_cert: str = "",
        tls_key: str = "",
    ):
        self.api = api
        self.host, self.port = parse_address(address)
        self.tls = _tls_context(tls_cert, tls_key) if tls_cert else None
        loopback = is_loopback(self.host)
        self.require_signature = (not loopback) if require_signature is None else require_signature
        if self.require_signature and not credentials:
            raise ConfigError(
                f"http_credentials (NEO_AGENT_HTTP_CREDENTIALS): required to serve on {address}, which is not a "
                "loopback address; give ACCESS_KEY_ID:SECRET pairs, or bind to 127.0.0.1"
            )
        self.verifier = SigV4Verifier(credentials) if self.require_signature and credentials else None
        self.replays = ReplayGuard() if self.verifier is not None else None
        self.check_host = loopback and not self.require_signature
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._idle = threading.Condition()

    @property
    def url(self) -> str:
        """The endpoint URL, with the port the OS chose when the configured port was 0."""
        port = self._server.server_address[1] if self._server else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._server = _Server((self.host, self.port), family, self)
        except OSError as exc:
            raise ConfigError(f"http (NEO_AGENT_HTTP, --http): cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": SERVE_POLL_S}, name="http", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._server.cut_slow_requests, name="http-deadline", daemon=True).start()
        log.info("http: serving SageMaker's JSON protocol on %s (%s)", self.url,
                 "SigV4 required" if self.require_signature else "loopback, no signature required")

    def stop(self, timeout: float) -> None:
        """Close the listener, then wait (up to `timeout`) for requests already read to be answered."""
        server, self._server = self._server, None
        if server is None:
            return
        deadline = time.monotonic() + timeout
        server.closing.set()  # a connection waiting for a slot is closed, the deadline thread ends
        server.shutdown()  # the accept loop ends within SERVE_POLL_S
        server.server_close()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._idle:
            if not self._idle.wait_for(lambda: self._inflight == 0, max(0.0, deadline - time.monotonic())):
                log.warning("http: %d request(s) still unanswered after %.1f s", self._inflight, timeout)
        log.info("http: stopped listening on %s:%s", self.host, self.port)

    def answer(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
        """One request, already read: check it, call the API, return the operation's output.

        Raises ApiError for every refusal. The order is AWS's: the caller is identified before
        the request is read for meaning.
        """
        with self._idle:
            self._inflight += 1
        try:
            header = {name.lower(): value for name, value in reversed(headers)}  # the first of repeats wins
            signed = None
            if self.verifier is not None:
                signed = self.verifier.verify(method, target, headers, body)
            elif self.check_host and not _host_is_loopback_name(header.get("host", "")):
                raise AccessDeniedException(
                    "This endpoint is bound to loopback and answers only requests addressed to a loopback host."
                )
            operation = header.get("x-amz-target", "")
            if not operation.startswith(TARGET_PREFIX):
                raise UnknownOperationException(
                    f"X-Amz-Target must be {TARGET_PREFIX}<Operation>, got {operation!r}" if operation
                    else "The request has no X-Amz-Target header naming the operation."
                )
            name = operation[len(TARGET_PREFIX):]
            if signed is None or name not in ONCE_PER_SIGNATURE:
                return self.api.call(name, _parse_json(body))
            self.replays.claim(signed)
            accepted = False
            try:
                output = self.api.call(name, _parse_json(body))
                accepted = True
                return output
            finally:
                self.replays.settle(signed, accepted)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's TLS context: TLS 1.2 or later, the certificate chain and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http_tls_cert (NEO_AGENT_HTTP_TLS_CERT): cannot load {cert} with its key {key}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}  # botocore sends "{}" for an empty input; an empty body means the same
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationException(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:  # json's decoder recurses per level: '[' * 100000 fits in 1 MiB
        raise SerializationException("The request body is not valid JSON: it nests too deeply.") from None
    if not isinstance(value, dict):
        raise SerializationException("The request body must be a JSON object.")
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never holds the process up; stop() waits for answers
    # socketserver's listen backlog is 5: in a burst of 16 clients the kernel dropped the rest's
    # SYNs, and each waited out TCP's 1 s retransmit (benchmarks/results/load.md: p99 1034 ms).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, transport: HttpTransport):
        self.address_family = family
        self.transport = transport
        self.closing = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._reading: dict[socket.socket, float] = {}  # connection -> when its request must be in
        self._reading_lock = threading.Lock()
        super().__init__(address, _Handler)

    # --- at most MAX_CONNECTIONS at once, each with REQUEST_DEADLINE_S to send its request ----
    def process_request(self, request, client_address) -> None:
        while not self._slots.acquire(timeout=SERVE_POLL_S):  # the accept loop waits here
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        with self._reading_lock:
            self._reading[request] = time.monotonic() + REQUEST_DEADLINE_S
        try:
            super().process_request(request, client_address)  # a thread runs process_request_thread
        except BaseException:
            self.request_read(request)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.request_read(request)
            self._slots.release()

    def finish_request(self, request, client_address) -> None:
        context = self.transport.tls
        if context is None:
            super().finish_request(request, client_address)
            return
        try:
            # The connection's descriptor moves into the TLS socket: the deadline cuts that one.
            secure = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except OSError:
            return
        with self._reading_lock:
            if request in self._reading:
                self._reading[secure] = self._reading.pop(request)
        try:
            secure.settimeout(REQUEST_TIMEOUT_S)
            secure.do_handshake()
            super().finish_request(secure, client_address)
        except OSError as exc:  # ssl.SSLError is one: a plain-HTTP client, a bad certificate, a stall
            log.info("http: no TLS connection with %s: %s", client_address[0], exc)
        finally:
            self.request_read(secure)
            self.shutdown_request(secure)

    def request_read(self, request) -> None:
        """The connection's request is in (or it is gone): no deadline any more."""
        with self._reading_lock:
            self._reading.pop(request, None)

    def cut_slow_requests(self) -> None:
        """Until the server closes: shut the connections whose request is not in by its deadline
        (their handler's read then ends, and so does their thread)."""
        while not self.closing.wait(min(1.0, REQUEST_DEADLINE_S / 4)):
            now = time.monotonic()
            with self._reading_lock:
                late = [sock for sock, due in self._reading.items() if due <= now]
                for sock in late:
                    del self._reading[sock]
            for sock in late:
                log.warning("http: a client sent no complete request within %.0f s; its connection is closed",
                            REQUEST_DEADLINE_S)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our fully qualified name, which can hang on a
        # device without a resolver; nothing here uses it.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "neo-agent"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    # The headers and the body leave in two writes; with Nagle's algorithm on, the body could
    # wait for the client's (delayed) ACK of the headers.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_POST

    def _serve(self) -> None:
        started = time.monotonic()
        self._body_read = False
        request_id = str(uuid.uuid4())
        operation = self.headers.get("X-Amz-Target", "-")
        try:
            if urlsplit(self.path).path != "/":
                raise UnknownPath(f"Only POST / is served here, not {self.path!r}.")
            if self.command != "POST":
                raise MethodNotAllowed(f"Only POST / is served here, not {self.command}.")
            body = self._read_body()
            if body is None:
                return  # the client went away mid-body; there is no one to answer
            self.server.request_read(self.request)
            answer = self.server.transport.answer(self.command, self.path, list(self.headers.items()), body)
            status, payload, error = 200, answer, None
        except ApiError as exc:
            status, payload, error = exc.http_status, exc.to_body(), exc.code
        except Exception:
            log.exception("http: %s failed (request %s)", operation, request_id)
            failure = ApiError(f"The agent failed to answer; see its log for request {request_id}.")
            status, payload, error = failure.http_status, failure.to_body(), failure.code
        self._send(status, payload, request_id, error)
        if not self._body_read and (self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0"):
            self._linger()
        log.debug("http: %s %s -> %d %s (%.1f ms, request %s)", self.client_address[0], operation, status,
                  error or "", (time.monotonic() - started) * 1000, request_id)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            raise LengthRequired("Send the body with a Content-Length; chunked bodies are not accepted.")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise LengthRequired("A POST needs a Content-Length header.")
        if not length_text.strip().isdigit():
            raise SerializationException(f"Content-Length is not a number: {length_text!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise RequestTooLargeException(f"The request body is {length} bytes; the limit is {MAX_BODY_BYTES}.")
        self._body_read = True
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stalled past REQUEST_TIMEOUT_S or reset the connection
            return None
        return body if len(body) == length else None

    def _linger(self) -> None:
        """After refusing a request without reading its body: let the client finish sending it.

        Closing a socket with unread data sends a reset, which can destroy the answer in
        flight; so half-close, then discard what still arrives, bounded in bytes and time.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            for _ in range(LINGER_MAX_BYTES // 65536):
                if not self.connection.recv(65536):
                    break
        except OSError:
            pass

    def _send(self, status: int, payload: dict[str, Any], request_id: str, error: str | None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id)
        if error:
            self.send_header("x-amzn-ErrorType", error)
        if status == MethodNotAllowed.http_status:
            self.send_header("Allow", "POST")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, oversized headers, an odd method), in SageMaker's form."""
        self.close_connection = True
        error = (UnknownOperationException if code == 501 else SerializationException)(message or str(code))
        if not hasattr(self, "command") or not self.command:
            self.command = "POST"  # the request line was unreadable; answer with a body anyway
        self._send(code, error.to_body(), str(uuid.uuid4()), error.code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("http: " + format, *args)
