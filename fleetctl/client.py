"""Talking to a Manager (AdminService) or straight to one Daemon (DaemonService).

Heavy imports (grpclib, the TLS helpers, the schema) happen here, and this module is
imported only inside commands, so ``fleetctl --help`` stays fast.

fleetctl speaks the wire contract through protobuf's upb runtime (``schema.admin_pb2``,
``schema.daemon_pb2`` and their grpclib stubs), not betterproto: upb decodes a
10,000-node ``ListNodes`` reply in milliseconds where betterproto takes about a second,
and fleetctl then never imports betterproto (~85 ms of start-up).

Every call goes through :class:`fleetctl.failover.Router`: with several Manager
addresses it decides which one a call goes to and when a failed call may go to the next.

Every failure — gRPC status, refused connection, TLS problem, timeout — becomes a
:class:`~fleetctl.errors.CliError` with one line saying what failed and what to check
(:func:`translate`).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from common.tls import PeerIdentityError, client_context, identity_from_cert

from .errors import CliError, ExitCode, usage
from .failover import AnsweredError, Router, Target, os_reason, ssl_reason
from .settings import Address, Settings

if TYPE_CHECKING:
    from schema import admin_grpc, daemon_grpc

T = TypeVar("T")

_STATUS_EXIT = {
    Status.NOT_FOUND: ExitCode.NOT_FOUND,
    Status.PERMISSION_DENIED: ExitCode.PERMISSION_DENIED,
    Status.UNAUTHENTICATED: ExitCode.PERMISSION_DENIED,
    Status.UNAVAILABLE: ExitCode.UNAVAILABLE,
    Status.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    Status.INVALID_ARGUMENT: ExitCode.USAGE,
    Status.OUT_OF_RANGE: ExitCode.USAGE,
}


class Connection:
    """The channels to the target (one per Manager address), shared by every call of a
    command; unary calls fail over between Managers (:mod:`fleetctl.failover`).

    ``async with Connection(settings, target) as conn:``
    ``    await conn.call(conn.admin().ListNodes(request, timeout=conn.timeout))``
    """

    def __init__(self, settings: Settings, target: Target) -> None:
        self.settings = settings
        self.target = target
        self._ssl: ssl.SSLContext | None = None
        self._router: Router | None = None

    async def __aenter__(self) -> Connection:
        if not self.settings.insecure:
            files = self.settings.tls_files()
            role = "manager" if self.target.kind == "manager" else "node"
            try:
                self._ssl = client_context(
                    files, expect_role=role, expect_name=self.target.expect_name
                )
            except ssl.SSLError as exc:
                if not _loads_as_ca(files.ca_file):
                    raise usage(
                        f"cannot load the CA certificate {files.ca_file}: {ssl_reason(exc)} "
                        "— is it the Fleet CA certificate (ca.crt, PEM)? check --ca"
                    ) from None
                raise usage(
                    f"cannot load the client certificate {files.cert_file} / key "
                    f"{files.key_file} / CA {files.ca_file}: {ssl_reason(exc)} "
                    "(do the certificate and key belong together?)"
                ) from None
        self._router = Router(
            target=self.target,
            settings=self.settings,
            ssl_context=self._ssl,
            explain=self._explain_at,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._router is not None:
            self._router.close()
            self._router = None

    @property
    def router(self) -> Router:
        assert self._router is not None, "use Connection as an async context manager"
        return self._router

    @property
    def channel(self) -> Channel:
        """The channel to the endpoint that answered last (the first one before any)."""
        return self.router.channel()

    async def ready(self) -> Target:
        """Connect to a Manager that can be reached (the first in order), for streaming
        calls, which do not fail over; a :class:`CliError` when none can be."""
        return await self.router.ready()

    def peer_name(self) -> str | None:
        """The name in the server's verified certificate (a Daemon's node id), if known.

        grpclib keeps the TLS transport private; when its layout differs this is None.
        """
        try:
            transport = self.channel._protocol.connection._transport  # type: ignore[union-attr]
            identity = identity_from_cert(transport.get_extra_info("ssl_object").getpeercert())
        except AttributeError:
            return None
        return identity.name if identity else None

    @property
    def timeout(self) -> float:
        """Deadline of one call, in seconds (``--timeout``)."""
        return self.settings.timeout

    def admin(self) -> admin_grpc.AdminServiceStub:
        """The Manager's AdminService (messages from ``schema.admin_pb2``).

        grpclib stubs have no default deadline: pass ``timeout=conn.timeout`` to each call.
        """
        from schema import admin_grpc

        return self.router.stub(admin_grpc.AdminServiceStub)

    def daemon(self) -> daemon_grpc.DaemonServiceStub:
        """One Daemon's DaemonService (``schema.daemon_pb2``); ``timeout=conn.timeout`` too."""
        from schema import daemon_grpc

        return self.router.stub(daemon_grpc.DaemonServiceStub)

    async def call(
        self, awaitable: Awaitable[T], *, what: str = "", agent_without_node: str = ""
    ) -> T:
        """Await one RPC, turning any failure into a :class:`CliError`.

        ``agent_without_node``: the request named an agent but no node, so
        ``FAILED_PRECONDITION`` means the id is ambiguous — a usage error (exit 2); the
        value says how to name the node (``"NODE AGENT"``, ``"--node NODE"``).
        """
        try:
            return await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = await self.explain(exc, what=what)
            if (
                agent_without_node
                and isinstance(exc, GRPCError)
                and exc.status is Status.FAILED_PRECONDITION
            ):
                err = CliError(f"{err.message} ({agent_without_node})", ExitCode.USAGE)
            if err is exc:
                raise  # already one line (fleetctl.failover), its cause kept
            raise err from exc

    async def explain(self, exc: BaseException, *, what: str = "") -> CliError:
        """:func:`translate` (naming the endpoint that answered), plus a TLS probe when
        the server just dropped us, and "did you mean" for an unknown id."""
        if isinstance(exc, AnsweredError):
            target = exc.target
        elif self._router is not None:
            target = self._router.current()
        else:
            target = self.target
        err = await self._explain_at(exc, target, what=what)
        if isinstance(exc, GRPCError) and exc.status is Status.NOT_FOUND:
            hint = await self._did_you_mean(exc.message or "")
            if hint:
                err = CliError(f"{err.message}{hint}", err.code)
        return err

    async def _explain_at(self, exc: BaseException, target: Target, *, what: str = "") -> CliError:
        """:func:`translate` for ``target`` (one endpoint), plus a TLS probe when the
        server just dropped us.

        With TLS 1.3 a server that refuses our certificate does so after the client
        side of the handshake is done, so grpclib only sees the connection drop; a
        direct handshake shows the alert naming the reason.
        """
        dropped = isinstance(exc, StreamTerminatedError | ConnectionResetError | BrokenPipeError)
        alert = isinstance(exc, ssl.SSLError) and "alert" in ssl_reason(exc)
        if (dropped or alert) and self._ssl is not None and isinstance(target.address, Address):
            reason = await asyncio.to_thread(
                probe_tls, target.address, self._ssl, min(self.settings.timeout, 5.0)
            )
            if reason:
                return refused_certificate(target, self.settings, reason)
        return translate(exc, target, self.settings, what=what)

    async def _did_you_mean(self, message: str) -> str:
        """`` — did you mean …?`` for a NOT_FOUND naming an unknown node or agent id.

        The known ids are asked from the same server (at most 5 s); "" when nothing is
        close, the message names no id, or asking fails.
        """
        from .suggest import close_ids, did_you_mean

        unknown = _unknown_id(message, self.target.kind)
        if unknown is None:
            return ""
        kind, typed, node = unknown
        try:
            hint = did_you_mean(close_ids(typed, await self._known_ids(kind, node)))
            if not hint and kind == "agent" and node:
                # Not on this node, nothing like it either: maybe the wrong node.
                elsewhere = sorted(a.node_id for a in await self._fleet_agents() if a.id == typed)
                if elsewhere:
                    hint = f" — {typed} is on {', '.join(elsewhere[:MAX_NODES_NAMED])}"
        except asyncio.CancelledError:
            raise
        except Exception:
            return ""
        return hint

    async def _known_ids(self, kind: str, node: str) -> list[str]:
        """Node ids, or agent ids (of ``node``, or fleet-wide when "")."""
        timeout = min(self.settings.timeout, 5.0)
        if self.target.kind == "daemon":
            from schema import daemon_pb2

            reply = await self.daemon().ListAgents(daemon_pb2.ListAgentsRequest(), timeout=timeout)
            return [a.id for a in reply.agents]
        from schema import admin_pb2

        if kind == "node":
            nodes = await self.admin().ListNodes(admin_pb2.ListNodesRequest(), timeout=timeout)
            return [n.node_id for n in nodes.nodes]
        return [a.id for a in await self._fleet_agents(node)]

    async def _fleet_agents(self, node: str = "") -> list[Any]:
        """The Manager's view of ``node``'s agents (every node's when "")."""
        from schema import admin_pb2

        reply = await self.admin().ListAgents(
            admin_pb2.ListAgentsRequest(node_id=node), timeout=min(self.settings.timeout, 5.0)
        )
        return list(reply.agents)


# At most this many nodes named in "web is on node-a, node-b, ...".
MAX_NODES_NAMED = 5

# NOT_FOUND messages that name an id, as the Manager and the Daemon word them.
_UNKNOWN_NODE = re.compile(r"node (\S+) is not registered")
_UNKNOWN_AGENT = re.compile(r"agent (\S+) is not known on any node")
_UNKNOWN_AGENT_ON_NODE = re.compile(r"agent (\S+) is not known on node (\S+)")
_UNKNOWN_AGENT_ON = re.compile(r"(?:daemon (\S+): )?agent '([^']+)' is not configured on this node")


def _unknown_id(message: str, target_kind: str) -> tuple[str, str, str] | None:
    """``(kind, id, node)`` of the unknown id a NOT_FOUND message names, or None.

    ``kind`` is "node" or "agent"; ``node`` the node whose agents to compare with ("" =
    the whole fleet, or the Daemon we talk to).
    """
    if target_kind == "manager":
        if m := _UNKNOWN_NODE.search(message):
            return "node", m.group(1), ""
        if m := _UNKNOWN_AGENT.search(message):
            return "agent", m.group(1), ""
        if m := _UNKNOWN_AGENT_ON_NODE.search(message):
            return "agent", m.group(1), m.group(2)
    m = _UNKNOWN_AGENT_ON.search(message)
    if m and (m.group(1) or target_kind == "daemon"):
        return "agent", m.group(2), m.group(1) or ""
    return None


def probe_tls(address: Address, ctx: ssl.SSLContext, timeout: float) -> str | None:
    """Why the server drops us after the TLS handshake, or None if it does not.

    A server that accepted our certificate answers the HTTP/2 preface with a SETTINGS
    frame. One that refused it sends a TLS alert (naming the reason) or, like asyncio
    servers, just closes the connection.
    """
    try:
        with (
            socket.create_connection((address.host, address.port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=address.host) as tls,
        ):
            tls.sendall(_H2_PREFACE)
            if not tls.recv(1):
                return "it closed the connection right after the TLS handshake"
    except ssl.SSLCertVerificationError:
        return None  # our side refused theirs: translate() reports that
    except ssl.SSLError as exc:
        reason = ssl_reason(exc)
        return reason if "alert" in reason else None
    except (ConnectionResetError, BrokenPipeError):
        return "it reset the connection right after the TLS handshake"
    except OSError:
        return None
    return None


# HTTP/2 client preface and an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _loads_as_ca(path: object) -> bool:
    """Whether ``path`` holds a CA certificate (to tell a wrong --ca from a wrong --key)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError):
        return False
    return True


def refused_certificate(target: Target, settings: Settings, reason: str) -> CliError:
    return CliError(
        f"{target} refused our certificate {settings.cert} ({reason}) — "
        f"fleetctl needs an admin certificate issued by the Fleet CA; check --cert/--key",
        ExitCode.PERMISSION_DENIED,
    )


def translate(
    exc: BaseException, target: Target, settings: Settings, *, what: str = ""
) -> CliError:
    """One line and an exit code for an exception raised while talking to ``target``."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, GRPCError):
        code = _STATUS_EXIT.get(exc.status, ExitCode.FAILED)
        detail = exc.message or exc.status.name.lower().replace("_", " ")
        prefix = f"{what}: " if what else ""
        if exc.status is Status.PERMISSION_DENIED:
            return CliError(
                f"{prefix}permission denied by {target}: {detail} — fleetctl needs an admin "
                "certificate (check --cert)",
                code,
            )
        if exc.status is Status.UNAUTHENTICATED and "revoked" in detail:
            return CliError(
                f"{prefix}{target} refused our certificate {settings.cert}: {detail} — "
                "fleetctl needs an admin certificate that is not revoked; check --cert/--key",
                code,
            )
        if exc.status is Status.UNIMPLEMENTED:
            return CliError(
                f"{prefix}{target} does not support this yet ({detail}) — upgrade {target.program}",
                code,
            )
        if exc.status is Status.DEADLINE_EXCEEDED:
            return CliError(f"{prefix}{target} timed out: {detail}", code)
        return CliError(f"{prefix}{detail}", code)
    if isinstance(exc, PeerIdentityError):
        detail = str(exc.args[0]) if exc.args else str(exc)
        wanted_role = "manager" if target.kind == "manager" else "node"
        if target.expect_name and f"is {wanted_role}/" in detail:
            hint = f"is {target.expect_name} the node at {target.address}? check {target.flag}"
        else:
            other = "--daemon" if target.kind == "manager" else "--manager"
            hint = f"check {target.flag} (did you mean {other}?)"
        return CliError(
            f"{target} presented the wrong identity ({detail}) — {hint}",
            ExitCode.PERMISSION_DENIED,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CliError(
            f"{target} has a certificate we do not trust ({exc.verify_message or exc}) — "
            f"is {settings.ca} the CA that signed it? check --ca",
            ExitCode.PERMISSION_DENIED,
        )
    if isinstance(exc, ssl.SSLError):
        reason = ssl_reason(exc)
        if "alert" in reason:
            return refused_certificate(target, settings, reason)
        return CliError(
            f"TLS with {target} failed ({reason}) — is it serving TLS? check {target.flag} "
            "and --insecure",
            ExitCode.UNAVAILABLE,
        )
    if isinstance(exc, TimeoutError):
        return CliError(
            f"{target} did not answer within {settings.raw.get('timeout', settings.timeout)} — "
            f"is {target.program} overloaded? raise --timeout",
            ExitCode.UNAVAILABLE,
        )
    # A peer that drops the connection mid-call shows as any of these, depending on
    # whether our request was being written (broken pipe) or read (reset) at the time.
    if isinstance(
        exc,
        StreamTerminatedError
        | ProtocolError
        | ConnectionResetError
        | BrokenPipeError
        | ConnectionAbortedError,
    ):
        return CliError(
            f"{target} closed the connection ({exc or type(exc).__name__}) — is it a "
            f"{target.program} serving {'plaintext' if settings.insecure else 'TLS'}? "
            f"check {target.flag}",
            ExitCode.UNAVAILABLE,
        )
    if isinstance(exc, OSError):
        return CliError(
            f"cannot reach {target} ({os_reason(exc)}) — is {target.program} running? "
            f"check {target.flag}",
            ExitCode.UNAVAILABLE,
        )
    raise exc
