"""DaemonClientPool: the Manager's reused, identity-checked channels to Daemons.

One grpclib ``Channel`` per node, created on first use from the address the Daemon
registered and reused for every call; replaced when the node registers a different
address; closed with the pool. With TLS every channel shares one client context, which
accepts only a node certificate from the fleet's CA; every connection the channel makes
(the first, and grpclib's own reconnects) is then checked to hold
``spiffe://fleet/node/<node_id>`` before it is used. A valid certificate of *another*
node at that address closes the connection before any request is sent on it, and is not
retried: it is a configuration problem, not a blip.
(One shared context, not one per node: building a context reads the certificate files,
and a fleet-wide command on first contact would build thousands.)

Connection state per node follows the seed's machine and is logged on every change::

    Idle --connect--> Connecting --ok--> Ready
                          |  failure
                          v
                     Reconnecting --backoff delay--> Connecting   (up to N attempts)
                          |  attempts exhausted
                          v
                         Idle  -> the call fails with UNAVAILABLE naming the node

Delays follow gRPC's connection-backoff schedule (``common.backoff``: 1 s, ×1.6, ±20 %
jitter, capped). Every call carries a deadline (``daemons.call_timeout``, 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol

from common.backoff import Backoff
from common.errors import DeadlineExceeded, FleetError, Unavailable
from common.tls import PeerIdentityError, identity_from_cert
from schema import daemon_pb

from .config import split_host_port

log = logging.getLogger(__name__)

IDLE = "idle"
CONNECTING = "connecting"
READY = "ready"
RECONNECTING = "reconnecting"


class DaemonError(FleetError):
    """A Daemon answered with an error status: passed on with the node named."""

    def __init__(self, status: Any, message: str) -> None:
        super().__init__(message)
        self.status = status


class _NodeChannel(Channel):
    """A channel that accepts a connection only from ``spiffe://fleet/node/<node_id>``."""

    def __init__(self, node_id: str, host: str, port: int, ssl: ssl.SSLContext | None) -> None:
        super().__init__(host, port, ssl=ssl)
        self._node_id = node_id

    async def _create_connection(self) -> H2Protocol:
        protocol = await super()._create_connection()
        if self._ssl is not None:
            peer = identity_from_cert(protocol.connection.get_peer().cert())
            if peer is None or peer.role != "node" or peer.name != self._node_id:
                protocol.processor.close()
                raise PeerIdentityError(
                    f"server identity is {peer or 'none'}, expected node/{self._node_id}"
                )
        return protocol


@dataclass
class _Conn:
    node_id: str
    address: str
    channel: Channel
    backoff: Backoff
    state: str = IDLE
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DaemonClientPool:
    """Channels to Daemons keyed by node id (see module doc)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        call_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        connect_attempts: int = 3,
        backoff_initial: float = 1.0,
        backoff_max: float = 120.0,
    ) -> None:
        self._ssl = ssl_context
        self.call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._attempts = connect_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._conns: dict[str, _Conn] = {}
        self._closed = False

    # ---- state ----

    def states(self) -> dict[str, str]:
        """Connection state per node id (idle, connecting, ready, reconnecting)."""
        return {
            node_id: IDLE if c.state == READY and not c.channel._connected else c.state
            for node_id, c in self._conns.items()
        }

    def _set_state(self, conn: _Conn, state: str, why: str = "") -> None:
        if conn.state == state:
            return
        log.info(
            "daemon %s (%s): %s -> %s%s",
            conn.node_id,
            conn.address,
            conn.state.capitalize(),
            state.capitalize(),
            f" ({why})" if why else "",
        )
        conn.state = state

    # ---- channels ----

    def _get(self, node_id: str, address: str) -> _Conn:
        if self._closed:
            raise Unavailable("manager is shutting down")
        if not address:
            raise Unavailable(f"node {node_id} registered no daemon address")
        conn = self._conns.get(node_id)
        if conn is not None and conn.address == address:
            return conn
        if conn is not None:
            log.info("daemon %s moved from %s to %s", node_id, conn.address, address)
            conn.channel.close()
        host, port = split_host_port(address, f"daemon address of {node_id}")
        channel = _NodeChannel(node_id, host, port, self._ssl)
        backoff = Backoff(initial=self._backoff_initial, maximum=self._backoff_max)
        conn = _Conn(node_id, address, channel, backoff)
        self._conns[node_id] = conn
        return conn

    def forget(self, node_id: str) -> None:
        """Close and drop a node's channel (node removed or moved)."""
        conn = self._conns.pop(node_id, None)
        if conn is not None:
            conn.channel.close()
            self._set_state(conn, IDLE, "closed")

    async def _ensure_ready(self, conn: _Conn) -> None:
        if conn.channel._connected:
            return
        async with conn.lock:
            if conn.channel._connected:
                return
            if conn.state == READY:
                self._set_state(conn, IDLE, "connection lost")
            last: BaseException | None = None
            for attempt in range(1, self._attempts + 1):
                self._set_state(conn, CONNECTING, f"attempt {attempt}/{self._attempts}")
                try:
                    await asyncio.wait_for(conn.channel.__connect__(), self._connect_timeout)
                except ssl.SSLError as exc:
                    # Wrong identity or untrusted peer: retrying cannot help.
                    self._set_state(conn, IDLE, "TLS verification failed")
                    reason = getattr(exc, "verify_message", "") or str(exc)
                    raise Unavailable(
                        f"daemon {conn.node_id} at {conn.address} failed TLS verification: {reason}"
                    ) from None
                except (OSError, TimeoutError) as exc:
                    last = exc
                    if attempt == self._attempts:
                        break
                    delay = conn.backoff.next_delay()
                    self._set_state(conn, RECONNECTING, f"{_describe(exc)}; retry in {delay:.1f}s")
                    await asyncio.sleep(delay)
                else:
                    conn.backoff.reset()
                    self._set_state(conn, READY)
                    return
            conn.backoff.reset()
            self._set_state(conn, IDLE, f"gave up after {self._attempts} attempts")
            raise Unavailable(
                f"daemon {conn.node_id} at {conn.address} is unreachable after "
                f"{self._attempts} attempts: {_describe(last)}"
            )

    # ---- calls ----

    async def call(self, node_id: str, address: str, method: str, request: Any) -> Any:
        """Call DaemonService ``method`` (snake_case) on a node, with the pool's deadline."""
        conn = self._get(node_id, address)
        await self._ensure_ready(conn)
        stub = daemon_pb.DaemonServiceStub(conn.channel)
        try:
            return await getattr(stub, method)(request, timeout=self.call_timeout)
        except GRPCError as exc:
            raise DaemonError(
                exc.status, f"daemon {node_id}: {exc.message or exc.status.name}"
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(
                f"daemon {node_id} did not answer {method} within {self.call_timeout:g}s"
            ) from None
        except (StreamTerminatedError, ConnectionError, OSError) as exc:
            self._set_state(conn, IDLE, f"call failed: {_describe(exc)}")
            raise Unavailable(f"daemon {node_id} at {address}: {_describe(exc)}") from None

    async def stream(
        self, node_id: str, address: str, method: str, request: Any
    ) -> AsyncGenerator[Any, None]:
        """The replies of server-streaming DaemonService ``method`` on a node, as they
        come; no deadline (it lasts as long as the caller reads). Closing this generator
        cancels the call on the Daemon. Errors as :meth:`call`."""
        conn = self._get(node_id, address)
        await self._ensure_ready(conn)
        stub = daemon_pb.DaemonServiceStub(conn.channel)
        replies = getattr(stub, method)(request)
        try:
            # aclosing: the stub's generator holds the HTTP/2 stream; closing it (here,
            # when our caller closes us) resets the stream, so the Daemon stops too.
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
        except GRPCError as exc:
            raise DaemonError(
                exc.status, f"daemon {node_id}: {exc.message or exc.status.name}"
            ) from None
        except (StreamTerminatedError, ConnectionError, OSError) as exc:
            self._set_state(conn, IDLE, f"stream failed: {_describe(exc)}")
            raise Unavailable(f"daemon {node_id} at {address}: {_describe(exc)}") from None

    async def list_agents(self, node_id: str, address: str) -> daemon_pb.ListAgentsResponse:
        return await self.call(node_id, address, "list_agents", daemon_pb.ListAgentsRequest())

    async def operate_agent(
        self, node_id: str, address: str, agent_id: str, operation: str
    ) -> daemon_pb.AgentOperationResponse:
        request = daemon_pb.AgentOperationRequest(agent_id=agent_id, operation=operation)
        return await self.call(node_id, address, "operate_agent", request)

    async def get_agent_metrics(
        self, node_id: str, address: str, agent_id: str, duration_seconds: int
    ) -> daemon_pb.AgentMetricsResponse:
        request = daemon_pb.AgentMetricsRequest(
            agent_id=agent_id, duration_seconds=duration_seconds
        )
        return await self.call(node_id, address, "get_agent_metrics", request)

    # ---- lifecycle ----

    def close(self) -> None:
        """Close every channel (idempotent); in-flight calls fail with UNAVAILABLE."""
        self._closed = True
        for node_id in list(self._conns):
            self.forget(node_id)

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
