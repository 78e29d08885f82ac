"""What every transport is: a plug-in of the API, started and stopped with the agent.

A transport adapts one channel (HTTP, MQTT, AWS IoT Core, IoT Jobs, Greengrass IPC) to two
things and nothing else: `api.call(operation, body)` for requests, and the agent's event
stream for reporting back. It never touches the store or the runner. Its API is made for its
channel (`agent.api_for(name)`), so every job records where it came from and a transport can
report back on exactly the jobs it brought in.
"""
from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    name: str

    def start(self) -> None:
        """Begin serving; return once the channel is ready (listening, connected, subscribed)."""

    def stop(self, timeout: float) -> None:
        """Stop taking requests, flush what is owed (final statuses), release the channel.

        Safe to call twice.
        """
