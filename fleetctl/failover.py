"""Which Manager a call goes to, and whether a failed call may go to the next one.

``FLEET_MANAGER`` (``--manager``, the config file's ``manager``) may list several Managers,
and a name may resolve to several addresses (:mod:`common.addresses`): the endpoints,
tried in that order. :meth:`Router.unary` is the one place that decides, for every unary
call of a command, where it goes and what a failure means:

* **Not reached** — the connection was refused or reset, the name does not resolve, the
  TLS handshake failed, or connecting took longer than :data:`CONNECT_TIMEOUT`: nothing
  was sent, so any call moves on to the next endpoint after a short backoff.
* **Reached, then lost** — the connection dropped or the deadline passed after the request
  went out: a read-only call (``List*``, ``Get*``, ``Query*``) moves on; any other call
  (``OperateAgent``, ``ApplySpec``, ``RemoveNode``, ``CreateJoinToken``, …) may have been
  applied, so it is never sent again: one line says so and how to check (exit 5).
* **Answered** — a status is the Manager's answer, raised as :class:`AnsweredError` naming
  who answered; only ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` to a read-only call move on
  (another Manager may do better), and ``DEADLINE_EXCEEDED`` to any other call is reported
  as possibly applied.

The endpoint that answered is tried first by the next call (fleet-wide commands make many
calls), and which one it is shows in ``--debug`` output only. When no endpoint can be
reached the error is one line: ``no Manager reachable: A (connection refused), B (timed
out)`` (with a single endpoint, the usual "cannot reach manager at A …" line).

Streaming calls are opened on the endpoint that answered last (:meth:`Router.ready`
picks one that can be reached).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from common.addresses import Endpoint, ManagerAddresses, Resolver
from common.backoff import Backoff

from .errors import CliError, ExitCode
from .settings import Address, AddressList, Settings

log = logging.getLogger(__name__)

# Connecting to one Manager may take this long when there are others to try.
CONNECT_TIMEOUT = 5.0
# Looking the configured names up.
RESOLVE_TIMEOUT = 5.0
# Names of methods that change nothing: safe to send again to another Manager.
READ_ONLY_PREFIXES = ("List", "Get", "Query", "Watch", "Follow")
# Statuses a read-only call takes to the next Manager.
_NEXT_MANAGER = (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED)

S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class Target:
    """Who we dial: the Manager(s), or one Daemon (``--daemon``), optionally a named node.

    ``name`` is the DNS name ``address`` was found under ("" when dialled as given).
    """

    kind: str  # "manager" or "daemon"
    address: Address | AddressList
    expect_name: str | None = None
    name: str = ""

    @property
    def flag(self) -> str:
        return "--manager" if self.kind == "manager" else "--daemon"

    @property
    def program(self) -> str:
        return f"fleet-{self.kind}"

    @property
    def addresses(self) -> tuple[Address, ...]:
        if isinstance(self.address, AddressList):
            return self.address.addresses
        return (self.address,)

    def at(self, endpoint: Endpoint) -> Target:
        """This target narrowed to one endpoint (to name it in messages)."""
        return Target(
            self.kind, Address(endpoint.host, endpoint.port), self.expect_name, endpoint.name
        )

    def __str__(self) -> str:
        shown = f"{self.address} ({self.name})" if self.name else str(self.address)
        return f"{self.kind} at {shown}"


class AnsweredError(GRPCError):
    """A status the server answered, with the endpoint that answered it (``target``)."""

    def __init__(self, exc: GRPCError, target: Target) -> None:
        super().__init__(exc.status, exc.message, exc.details)
        self.target = target


def is_read_only(method: str) -> bool:
    """Whether ``method`` (``/pkg.Service/Name`` or ``Name``) only reads."""
    return method.rsplit("/", 1)[-1].startswith(READ_ONLY_PREFIXES)


# How to see whether a call that may have been applied was ({field}s from its request).
_CHECK = {
    "OperateAgent": "fleetctl agents list {node_id}",
    "PushUpdate": "fleetctl agent config get {node_id} {agent_id}",
    "RemoveNode": "fleetctl nodes list",
    "ApplySpec": "fleetctl specs list",
    "DeleteSpec": "fleetctl specs list --deleted",
    "SetRolloutState": "fleetctl rollout status {spec}",
    "ReloadDaemon": "fleetctl nodes show {node_id}",
    "CreateJoinToken": "fleetctl tokens list",
    "RevokeJoinToken": "fleetctl tokens list --all",
    "RevokeCertificate": "fleetctl certs list --revoked",
}


def check_hint(target: Target, method: str, request: Any) -> str:
    """How to see whether ``method`` with ``request`` took effect."""
    name = method.rsplit("/", 1)[-1]
    if target.kind == "daemon":
        return f"'fleetctl agents list --daemon {target.address}'"
    template = _CHECK.get(name)
    if template is None:
        return f"the matching 'fleetctl' listing before running {name} again"
    fields = {f: str(getattr(request, f, "")) for f in ("node_id", "agent_id", "spec")}
    return "'" + " ".join(template.format_map(fields).split()) + "'"


def ssl_reason(exc: ssl.SSLError) -> str:
    reason = (getattr(exc, "reason", None) or "").lower().replace("_", " ")
    return reason or str(exc)


def os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {(exc.strerror or str(exc)).lower()}"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else type(exc).__name__


def short_reason(exc: BaseException) -> str:
    """A few words on why one endpoint failed (for "no Manager reachable: A (…)")."""
    if isinstance(exc, GRPCError):
        detail = exc.message or ""
        return exc.status.name.lower().replace("_", " ") + (f": {detail}" if detail else "")
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {getattr(exc, 'verify_message', None) or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {ssl_reason(exc)}"
    if isinstance(exc, StreamTerminatedError | ProtocolError | ConnectionResetError):
        return "connection closed"
    if isinstance(exc, OSError):
        return os_reason(exc)
    return str(exc) or type(exc).__name__


# Raised while connecting: the request was not sent.
_CONNECT_FAILURES = (OSError, ssl.SSLError, TimeoutError)
# Raised after connecting, without an answer: the request may have been sent.
_LOST = (TimeoutError, StreamTerminatedError, ProtocolError, OSError, ssl.SSLError)

Explain = Callable[[BaseException, Target], Awaitable[CliError]]


class Router:
    """The endpoints of one target, a channel to each, and the failover policy (module doc).

    ``explain`` turns an exception met at one endpoint into the :class:`CliError` a user
    would see for it (the connection's TLS probe and :func:`fleetctl.client.translate`).
    ``resolve`` looks names up (the event loop's ``getaddrinfo`` unless given).
    """

    def __init__(
        self,
        *,
        target: Target,
        settings: Settings,
        ssl_context: ssl.SSLContext | None,
        explain: Explain,
        resolve: Resolver | None = None,
    ) -> None:
        self.target = target
        self._resolve_name = resolve
        self._settings = settings
        self._ssl = ssl_context
        self._explain = explain
        self._endpoints: list[Endpoint] | None = None
        self._unresolved: dict[str, str] = {}
        self._resolving = asyncio.Lock()
        self._channels: dict[Endpoint, Channel] = {}
        self._preferred: Endpoint | None = None

    # ---- endpoints and channels ----

    async def endpoints(self) -> list[Endpoint]:
        """The endpoints to try, names resolved (once per invocation)."""
        if self._endpoints is None:
            async with self._resolving:
                if self._endpoints is None:
                    self._endpoints = await self._resolve()
        return self._endpoints

    async def _resolve(self) -> list[Endpoint]:
        given = [Endpoint(a.host, a.port, str(a)) for a in self.target.addresses]
        if self.target.kind != "manager":
            return given  # one Daemon: its name is left to the connection
        addresses = ManagerAddresses(
            configured=[e.source for e in given],
            timeout=min(self._settings.timeout, RESOLVE_TIMEOUT),
            resolve=self._resolve_name,
        )
        if not addresses.needs_lookup:
            return given
        await addresses.resolve()
        self._unresolved = dict(addresses.unresolved)
        return list(addresses.endpoints)

    def _first(self) -> Endpoint:
        if self._preferred is not None:
            return self._preferred
        if self._endpoints:
            return self._endpoints[0]
        first = self.target.addresses[0]
        return Endpoint(first.host, first.port, str(first))

    def channel(self, endpoint: Endpoint | None = None) -> Channel:
        """The channel to ``endpoint`` (default: the one that answered last)."""
        endpoint = endpoint or self._first()
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = Channel(endpoint.host, endpoint.port, ssl=self._ssl)
            self._channels[endpoint] = channel
        return channel

    def current(self) -> Target:
        """The target narrowed to the endpoint that answered last (or will be tried first)."""
        if self._preferred is None and self._endpoints is None:
            return self.target
        return self.target.at(self._first())

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def stub(self, make: Callable[[Channel], S]) -> S:
        """A grpclib stub whose unary methods go through :meth:`unary`; its streaming
        methods use the channel of the endpoint that answered last."""
        stub = make(self.channel())
        for name, method in vars(stub).items():
            if isinstance(method, UnaryUnaryMethod):
                setattr(stub, name, _RoutedMethod(method, self))
        return stub

    # ---- the policy ----

    async def ready(self) -> Target:
        """Connect to the first endpoint that can be reached and make it the preferred
        one (where streams go); the one-line error when none can be."""
        failures: list[_Failure] = []
        backoff = _backoff()
        order = self._order(await self.endpoints())
        for i, endpoint in enumerate(order):
            if i:
                await asyncio.sleep(backoff.next_delay())
            try:
                await self._connect(endpoint, self._connect_timeout(len(order), None))
            except _CONNECT_FAILURES as exc:
                failures.append(_Failure(endpoint, exc))
                continue
            self._answered(endpoint, "connect")
            return self.target.at(endpoint)
        raise await self._give_up(failures)

    async def unary(
        self,
        method: UnaryUnaryMethod[S, R],
        message: S,
        *,
        timeout: float | None,
        metadata: Any,
    ) -> R:
        """Send one unary call, moving on to the next endpoint when that is safe."""
        name = method.name.rsplit("/", 1)[-1]
        read_only = is_read_only(method.name)
        failures: list[_Failure] = []
        answer: AnsweredError | None = None
        backoff = _backoff()
        order = self._order(await self.endpoints())
        for i, endpoint in enumerate(order):
            target = self.target.at(endpoint)
            if i:
                delay = backoff.next_delay()
                log.debug("%s: trying %s in %.2f s", name, target, delay)
                await asyncio.sleep(delay)
            try:
                channel = await self._connect(endpoint, self._connect_timeout(len(order), timeout))
            except _CONNECT_FAILURES as exc:
                log.debug("%s: %s not reached (%s)", name, target, short_reason(exc))
                failures.append(_Failure(endpoint, exc))
                continue
            call = UnaryUnaryMethod(channel, method.name, method.request_type, method.reply_type)
            try:
                reply = await call(message, timeout=timeout, metadata=metadata)
            except GRPCError as exc:
                self._answered(endpoint, name)
                if read_only and exc.status in _NEXT_MANAGER:
                    log.debug("%s: %s answered %s", name, target, short_reason(exc))
                    answer = AnsweredError(exc, target)
                    continue
                if exc.status is Status.DEADLINE_EXCEEDED:
                    raise self._maybe_applied(target, exc, method.name, message) from exc
                raise AnsweredError(exc, target) from exc
            except _LOST as exc:
                err = await self._explain(exc, target)
                if err.code is ExitCode.PERMISSION_DENIED:
                    raise err from exc  # it refused our certificate: so will the others
                if not read_only:
                    raise self._maybe_applied(target, exc, method.name, message) from exc
                log.debug("%s: %s lost (%s)", name, target, short_reason(exc))
                failures.append(_Failure(endpoint, exc, err))
                continue
            self._answered(endpoint, name)
            return reply
        if answer is not None:
            raise answer  # a Manager answered: that says more than the others' silence
        raise await self._give_up(failures)

    def _order(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        if self._preferred in endpoints:
            start = endpoints.index(self._preferred)
            return endpoints[start:] + endpoints[:start]
        return list(endpoints)

    def _connect_timeout(self, count: int, timeout: float | None) -> float:
        whole = timeout if timeout is not None else self._settings.timeout
        return min(whole, CONNECT_TIMEOUT) if count + len(self._unresolved) > 1 else whole

    async def _connect(self, endpoint: Endpoint, timeout: float) -> Channel:
        channel = self.channel(endpoint)
        # Connect (TCP and TLS) before the call, so a failure here is known to have sent
        # nothing; grpclib connects the same way on a stream's first send.
        async with asyncio.timeout(timeout):
            await channel.__connect__()
        return channel

    def _answered(self, endpoint: Endpoint, name: str) -> None:
        if endpoint != self._preferred:
            log.debug("%s: answered by %s", name, self.target.at(endpoint))
            self._preferred = endpoint

    def _maybe_applied(
        self, target: Target, exc: BaseException, method: str, request: Any
    ) -> CliError:
        if isinstance(exc, TimeoutError):
            what = (
                f"did not answer within {self._settings.raw.get('timeout', self._settings.timeout)}"
            )
        elif isinstance(exc, GRPCError):
            what = f"gave up ({short_reason(exc)})"
        else:
            what = f"stopped answering ({short_reason(exc)})"
        return CliError(
            f"the {target} {what} after the request was sent: it may have been applied; "
            f"check with {check_hint(target, method, request)}",
            ExitCode.UNAVAILABLE,
        )

    async def _give_up(self, failures: list[_Failure]) -> CliError:
        """The one line for a call no endpoint took."""
        tried = len(failures) + len(self._unresolved)
        if not failures and tried == 1:
            (entry, why), *_ = self._unresolved.items()
            return CliError(
                f"cannot reach {self.target.kind} at {entry} (cannot resolve host: "
                f"{why.lower()}) — is {self.target.program} running? check {self.target.flag}",
                ExitCode.UNAVAILABLE,
            )
        for failure in failures:
            if failure.err is None:
                failure.err = await self._explain(failure.exc, self.target.at(failure.endpoint))
        if tried == 1:
            return failures[0].explained()
        for failure in failures:
            if failure.explained().code is not ExitCode.UNAVAILABLE:
                return failure.explained()  # e.g. a certificate refused: its hint matters
        reasons = [
            f"{entry} (cannot resolve host: {why})" for entry, why in self._unresolved.items()
        ]
        reasons += [f"{f.endpoint} ({short_reason(f.exc)})" for f in failures]
        err = CliError(
            f"no {self.target.kind.capitalize()} reachable: {', '.join(reasons)}",
            ExitCode.UNAVAILABLE,
        )
        if failures:
            err.__cause__ = failures[-1].exc  # --debug shows its traceback
        return err


@dataclass
class _Failure:
    """One endpoint that did not take a call: why, and the line a user would see for it."""

    endpoint: Endpoint
    exc: BaseException
    err: CliError | None = None

    def explained(self) -> CliError:
        assert self.err is not None
        if self.err.__cause__ is None and self.err is not self.exc:
            self.err.__cause__ = self.exc  # --debug shows its traceback
        return self.err


def _backoff() -> Backoff:
    """A short pause before the next endpoint: the first was refused, not overloaded."""
    return Backoff(initial=0.05, multiplier=2.0, maximum=0.5)


class _RoutedMethod(UnaryUnaryMethod[S, R]):
    """A stub's unary method, sent through :meth:`Router.unary`."""

    def __init__(self, method: UnaryUnaryMethod[S, R], router: Router) -> None:
        super().__init__(method.channel, method.name, method.request_type, method.reply_type)
        self._router = router

    async def __call__(
        self, message: S, *, timeout: float | None = None, metadata: Any = None
    ) -> R:
        return await self._router.unary(self, message, timeout=timeout, metadata=metadata)
