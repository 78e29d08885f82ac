"""Greengrass IPC: the nucleus's connection to AWS IoT Core, as the agent's transports see it.

This module owns awsiotsdk's Greengrass IPC client (GreengrassCoreIPCClientV2).
`IpcConnection` offers IotCoreConnection's interface (route, subscribe, publish, start, stop,
...), so the greengrass transport and the unchanged iotjobs transport share the nucleus's
connection as they share the awscrt one elsewhere. The nucleus owns what awscrt's client does
there: it keeps the MQTT connection, reconnects and resubscribes by itself, and spools QoS 1
publishes while offline. A PublishToIoTCore request therefore ends when the nucleus has the
message in its spooler (in memory by default), not at IoT Core's PUBACK.

Errors (the IPC client's are translated here, `raise ... from exc`):

    AgentError
    └── GreengrassError        the nucleus's IPC could not be used; names the IPC error
        ├── IpcUnavailable     no IPC connection (not started by the nucleus, or it went away);
        │                      also a ConfigError, so `neo-agent run` exits 2 with one line
        ├── IpcRefused         UnauthorizedError: the recipe's accessControl does not allow it
        │                      (or {iot:thingName} was not interpolated); also a ConfigError
        ├── PublishFailed      PublishToIoTCore failed otherwise (the spooler is full, say)
        └── SubscribeFailed    SubscribeToIoTCore failed otherwise
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
from typing import Any, Callable, Mapping

from agent.errors import AgentError, ConfigError
from agent.transports import topics
from agent.transports.iotcore import topic_matches
from agent.transports.topics import Incoming

log = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"  # set by the nucleus for its components
TOKEN_ENV = "SVCUID"
IPC_TIMEOUT_S = 10.0  # an IPC request the nucleus does not answer in this long has failed
UNAUTHORIZED_HINT = ("the component's accessControl must allow it; {iot:thingName} in accessControl needs "
                     "aws.greengrass.Nucleus's interpolateComponentConfiguration set to true")


class GreengrassError(AgentError):
    """The nucleus's IPC could not be used for what was asked."""


class IpcUnavailable(GreengrassError, ConfigError):
    """No IPC connection to the nucleus."""


class IpcRefused(GreengrassError, ConfigError):
    """The nucleus refused an operation (UnauthorizedError)."""


class PublishFailed(GreengrassError):
    """PublishToIoTCore failed."""


class SubscribeFailed(GreengrassError):
    """SubscribeToIoTCore failed."""


def translate(exc: BaseException, doing: str, kind: type[GreengrassError] = GreengrassError) -> GreengrassError:
    """An IPC error (model.UnauthorizedError, ServiceError, ...) as the agent's, saying what was being done."""
    from awsiot.greengrasscoreipc import model

    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, model.UnauthorizedError):
        return IpcRefused(f"{doing}: the nucleus refused it (UnauthorizedError: {message}); {UNAUTHORIZED_HINT}")
    return kind(f"{doing}: {type(exc).__name__}: {message}")


def under_greengrass(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the Greengrass nucleus started this process: its IPC socket and token are set."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(SOCKET_ENV) and environ.get(TOKEN_ENV))


def connect_ipc():
    """The real IPC client: connects to the socket in SOCKET_ENV with the token in SVCUID."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    return GreengrassCoreIPCClientV2()


Handler = Callable[[Incoming], None]


class IpcConnection:
    """The nucleus's connection to IoT Core, as the transports see it: IotCoreConnection's interface.

    route / on_connect / on_disconnect / call_soon / subscribe / publish / start / stop / connected
    mean what they mean there, so the iotjobs transport runs on either. Handlers run one at a
    time, in arrival order, on this connection's own thread (the IPC client calls back on a pool).
    A filter is subscribed once (two IPC subscriptions to one filter would deliver twice).
    """

    def __init__(self, thing: str, *, client_factory: Callable[[], Any] | None = None):
        self.thing = topics.check_thing_name(thing)
        self._client_factory = client_factory or connect_ipc
        self.client: Any = None
        self._routes: list[tuple[str, Handler]] = []
        self._listeners: list[Callable[[bool], None]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self._stream_lost: list[Callable[[str], None]] = []
        self._streams: dict[str, Any] = {}  # filter -> the IPC stream operation
        self._lock = threading.Lock()
        self._users = 0
        self._stopping = False
        self._inbox: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None

    # --- what transports call (IotCoreConnection's interface) --------------------------------
    def route(self, topic_filter: str, handler: Handler) -> None:
        with self._lock:
            self._routes.append((topic_filter, handler))

    def on_connect(self, listener: Callable[[bool], None]) -> None:
        """`listener(False)` once the connection is up; the nucleus's reconnects are its own affair."""
        with self._lock:
            self._listeners.append(listener)

    def on_disconnect(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._disconnect_listeners.append(listener)

    def on_stream_lost(self, listener: Callable[[str], None]) -> None:
        """`listener(what)` when the nucleus closes a subscription the agent did not close."""
        with self._lock:
            self._stream_lost.append(listener)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._inbox.put(("call", fn))

    @property
    def connected(self) -> bool:
        return self.client is not None and not self._stopping

    def subscribe(self, filters: list[str]) -> concurrent.futures.Future:
        """SubscribeToIoTCore, QoS 1, for each filter not yet subscribed; the future ends when all are."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            for topic_filter in dict.fromkeys(filters):
                self._subscribe_one(topic_filter)
        except GreengrassError as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> concurrent.futures.Future:
        """PublishToIoTCore; the future ends when the nucleus has taken the message (its spooler)."""
        from awsiot.greengrasscoreipc.model import QOS

        done: concurrent.futures.Future = concurrent.futures.Future()
        doing = f"PublishToIoTCore {topic}"
        client = self.client
        if client is None:
            done.set_exception(PublishFailed(f"{doing}: the connection is not started"))
            return done
        try:
            sent = client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE if qos else QOS.AT_MOST_ONCE,
                payload=payload.encode() if isinstance(payload, str) else payload,
                response_topic=response_topic, correlation_data=correlation_data)
        except Exception as exc:  # the client's, raised at once (the connection is closed, say)
            done.set_exception(translate(exc, doing, PublishFailed))
            return done

        def settle(future: concurrent.futures.Future) -> None:
            if future.exception() is None:
                done.set_result(None)
            else:
                done.set_exception(translate(future.exception(), doing, PublishFailed))

        sent.add_done_callback(settle)
        return done

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to the nucleus (on the first call) and subscribe every route; raises GreengrassError."""
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self._stopping = False
        try:
            self.client = self._client_factory()
        except Exception as exc:
            with self._lock:
                self._users = 0
            raise IpcUnavailable(f"Greengrass IPC: cannot connect to the nucleus ({SOCKET_ENV}="
                                 f"{os.environ.get(SOCKET_ENV, '')!r}): {type(exc).__name__}: {exc}") from exc
        self._dispatcher = threading.Thread(target=self._dispatch, name="greengrass-dispatch", daemon=True)
        self._dispatcher.start()
        with self._lock:
            filters = [topic_filter for topic_filter, _ in self._routes]
        try:
            self.subscribe(filters).result()
        except GreengrassError:
            self._shutdown(IPC_TIMEOUT_S)
            with self._lock:
                self._users = 0
            raise
        log.info("serving AWS IoT Core through the Greengrass nucleus as %s", self.thing)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            self.call_soon(lambda listener=listener: listener(False))

    def stop(self, timeout: float = IPC_TIMEOUT_S) -> None:
        """Close the subscriptions and the connection after the last user stops. Safe to call twice."""
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users:
                return
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        self._stopping = True
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            _close_quietly(stream)
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # the connection may be gone already
                log.info("Greengrass IPC: closing: %s", exc)
        self._inbox.put(None)
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout)
        self._dispatcher = None

    # --- IPC streams (their callbacks run on the IPC client's pool: hand over, never block) ----
    def _subscribe_one(self, topic_filter: str) -> None:
        from awsiot.greengrasscoreipc.model import QOS

        with self._lock:
            if topic_filter in self._streams:
                return
        doing = f"SubscribeToIoTCore {topic_filter}"
        client = self.client
        if client is None:
            raise SubscribeFailed(f"{doing}: the connection is not started")
        try:
            response, stream = client.subscribe_to_iot_core_async(
                topic_name=topic_filter, qos=QOS.AT_LEAST_ONCE, on_stream_event=self._on_message,
                on_stream_error=lambda error: self._on_stream_error(topic_filter, error),
                on_stream_closed=lambda: self._on_stream_closed(topic_filter))
            response.result(IPC_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise SubscribeFailed(f"{doing}: the nucleus did not answer within {IPC_TIMEOUT_S:.0f} s") from None
        except Exception as exc:
            raise translate(exc, doing, SubscribeFailed) from exc
        with self._lock:
            self._streams[topic_filter] = stream

    def _on_message(self, event) -> None:
        message = event.message
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        correlation = message.correlation_data
        if isinstance(correlation, str):
            correlation = correlation.encode()
        self._inbox.put(("message", Incoming(message.topic_name, payload, message.response_topic, correlation)))

    def _on_stream_error(self, topic_filter: str, error: Exception) -> bool:
        log.error("%s", translate(error, f"SubscribeToIoTCore {topic_filter}: stream error"))
        return True  # close it; _on_stream_closed reports the loss

    def _on_stream_closed(self, what: str) -> None:
        with self._lock:
            lost = not self._stopping and self._streams.pop(what, None) is not None
            listeners = list(self._stream_lost) if lost else []
        for listener in listeners:
            self.call_soon(lambda listener=listener: listener(what))

    def add_stream(self, what: str, stream: Any) -> None:
        """Keep a transport's own IPC stream (configuration updates) to close with the connection."""
        with self._lock:
            self._streams[what] = stream

    def stream_closed(self, what: str) -> None:
        """A transport's own stream closed (its on_stream_closed)."""
        self._on_stream_closed(what)

    # --- the dispatch thread -------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            kind, value = item
            if kind == "call":
                _call(value)
                continue
            with self._lock:
                handlers = [h for f, h in self._routes if topic_matches(f, value.topic)]
            if not handlers:
                log.debug("no handler for %s", value.topic)
            for handler in handlers:
                _call(lambda handler=handler: handler(value))


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("%r failed", fn)


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception as exc:  # already closed by the nucleus, or the connection went
        log.debug("closing an IPC stream: %s", exc)
