"""The interfaces between the control-plane logic and the gRPC adapter (``barge.rpc``).

The coordinator implements ``AgentHub`` and ``Authenticator`` and talks to agents through
``AgentSession``; the agent implements ``CommandHandler``. Nothing here knows about gRPC, so the
coordinator and agent logic can be tested without a network.
"""

from __future__ import annotations

from typing import Protocol

from barge.control.messages import AgentEvent, CoordinatorCommand, Hello


class AgentSession(Protocol):
    """One accepted agent stream. A node has at most one session; a reconnect replaces it."""

    @property
    def node(self) -> str:
        """The node the agent runs on (authenticated against its token)."""
        ...

    @property
    def hello(self) -> Hello:
        """The Hello that opened this session: the agent's capacity and the work it was running."""
        ...

    def send(self, command: CoordinatorCommand) -> None:
        """Queue a command for the agent. Thread-safe, never blocks long; dropped if the session ended."""
        ...

    def close(self, reason: str) -> None:
        """End the stream; the agent reconnects later. Idempotent."""
        ...


class AgentHub(Protocol):
    """The coordinator's side of every agent stream. Calls for one session arrive in order, on one thread.

    ``agent_connected`` may raise a ``barge.errors.BargeError`` to refuse the agent; the stream then
    ends with the matching gRPC status and ``agent_disconnected`` is not called for it.
    """

    def agent_connected(self, session: AgentSession) -> None: ...

    def agent_event(self, session: AgentSession, event: AgentEvent) -> None: ...

    def agent_disconnected(self, session: AgentSession) -> None: ...


class Authenticator(Protocol):
    """Decides whether a bearer token may speak for a node."""

    def authenticate(self, token: str, claimed_node: str) -> str:
        """Return an identity for logs, or raise ``Unauthenticated`` / ``PermissionDenied``."""
        ...


class CommandHandler(Protocol):
    """The agent's side: acts on what the coordinator says. Must not block the stream for long."""

    def handle(self, command: CoordinatorCommand) -> None: ...
