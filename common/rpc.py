"""The guarded gRPC handler layer every Fleet server uses.

:class:`GuardedService` wraps a betterproto ``ServiceBase`` for ``grpclib.server.Server``
and, for every call, before the service sees it:

* works out the caller's :class:`~common.tls.Identity` from the verified TLS handshake
  (or ``local`` on a Unix socket, ``insecure`` in explicit plaintext mode);
* refuses methods the caller's role may not call (``PERMISSION_DENIED``) — an allow-list
  per method, so a method missing from the policy is refused to everyone; with
  ``trust_roots``, the manager and admin roles count only in certificates a fleet root
  signed directly (a Manager's issuing CA can mint node identities, nothing more);
* refuses a revoked certificate (``UNAUTHENTICATED``, with ``revocations``: a
  :class:`~common.revocation.RevocationList`), and closes every open connection of a
  certificate the moment the list revokes it;
* with ``authenticate`` (a :class:`HeaderAuth`), authenticates the caller from the call's
  metadata before its request is read (the Daemon's agent socket: the agent's id and
  token), refusing wrong credentials with the hook's status; a caller without them may
  send at most ``HeaderAuth.max_bytes_without`` (``UNAUTHENTICATED`` from the length
  prefix beyond), so what an unknown caller makes the server read and decode is small;
* reads the request itself with a size bound, so an oversized message is refused from its
  5-byte length prefix before it is buffered (grpclib alone would buffer it whole), and a
  compressed or malformed one gets a clear status; on a server built by
  :func:`make_server` the announced length is also reserved from the connection's, the
  peer's and the server's byte budgets (``RESOURCE_EXHAUSTED`` when one is spent), and a
  body that stops arriving is dropped after the server's ``body_stall_timeout``
  (``DEADLINE_EXCEEDED``), see :mod:`common.h2limits`;
* bounds what the request may make the decoder build (repeated elements per field path,
  field records) on the wire, before decoding: ``INVALID_ARGUMENT`` for a decode bomb,
  in well under a millisecond (:mod:`common.wirelimits`);
* sheds load (:mod:`common.overload`): a method with a budget (``max_in_flight``) is
  refused at once, before its request is read, while that many of its calls are in
  progress or when the call's deadline is shorter than the method's recent service time
  — with ``RESOURCE_EXHAUSTED`` (or ``UNAVAILABLE``) and a ``retry in N s`` hint, so the
  caller waits and keeps its data instead of queueing behind work the server cannot
  finish before the caller's deadline. On a server built by :func:`make_server` the
  refusal is answered from the call's HEADERS (:meth:`GuardedService.early_refusals`),
  before grpclib makes a stream or a task for it, for callers this service already
  identified and authorised on that connection; so are wrong metadata credentials;
* translates :class:`~common.errors.FleetError` into its status and message, and any other
  exception into ``INTERNAL`` with a request id that is logged with the traceback;
* reports (method, status, seconds) to an optional observer for metrics.

Handlers read the caller with :func:`current_call` (a context variable set per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import secrets
import socket
import struct
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpclib.const
import grpclib.server
from betterproto.casing import snake_case
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .errors import FleetError
from .h2limits import EarlyRefusal, H2Limits, HardenedServer, ShieldedConnection, make_server
from .overload import Admission, MethodLimit
from .revocation import PeerCertificate, RevocationList
from .tls import INSECURE, LOCAL, Identity, identity_from_cert
from .wirelimits import DEFAULT_DECODE_LIMITS, DecodeLimits, DecodeRefused, Plan, plan_for

__all__ = [
    "CallContext",
    "DecodeLimits",
    "GuardedService",
    "H2Limits",
    "HardenedServer",
    "HeaderAuth",
    "Transport",
    "current_call",
    "make_server",
    "wait_server_closed",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A caller that opens a call and never finishes its request must not hold the handler
# forever (grpclib applies a deadline only when the client sends one).
DEFAULT_REQUEST_TIMEOUT = 30.0
# Server-streaming calls (follows) open at once per caller identity, and how long one
# reply may wait for a client that does not read before the stream is dropped.
DEFAULT_MAX_STREAMS_PER_CALLER = 8
DEFAULT_STREAM_SEND_TIMEOUT = 10.0

Observer = Callable[[str, str, float], None]

# Request ids: a per-process random prefix and a counter (unique, and cheaper than a uuid4
# per request on a Manager serving thousands of calls a second).
_REQUEST_PREFIX = secrets.token_hex(3)
_request_numbers = itertools.count(1)


@dataclass(frozen=True)
class CallContext:
    """What a handler may know about the call it is serving."""

    identity: Identity
    method: str
    request_id: str
    peer: str
    # On a Unix socket (Transport.LOCAL): the calling process' pid from SO_PEERCRED, else 0.
    peer_pid: int = 0
    # The HTTP/2 connection the call came on (grpclib's), for the server's own use.
    connection: Any = field(default=None, repr=False, compare=False)
    # What HeaderAuth.check returned for the call's metadata (None: no credentials there).
    principal: Any = field(default=None, repr=False, compare=False)


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("fleet_call")


def current_call() -> CallContext:
    """The context of the call being served (only valid inside a guarded handler)."""
    return _current.get()


@dataclass(frozen=True)
class HeaderAuth:
    """Authentication from a call's metadata, made before its request is read.

    ``check(method, metadata, peer_pid)`` is given the method name (as in the ``.proto``),
    the request headers (lower-case names) and, on a Unix socket, the caller's pid (else
    0). It returns what the credentials prove (any object but None: the handler reads it
    as ``current_call().principal``), None when the metadata carries no credentials, and
    raises a :class:`~common.errors.FleetError` (``UNAUTHENTICATED``...) when they are
    wrong — answered from the HEADERS on a server built by :func:`make_server`.

    A call without credentials may carry a request of at most ``max_bytes_without``
    bytes (``UNAUTHENTICATED`` from its length prefix beyond, naming ``hint``: what the
    metadata should hold); its handler authenticates it from the body.
    """

    check: Callable[[str, Mapping[str, str], int], Any]
    max_bytes_without: int
    hint: str = "credentials in its metadata"


class Transport:
    """How callers on a listener are identified."""

    TLS = "tls"
    LOCAL = "local"
    INSECURE = "insecure"
    # TLS without client certificates (the Manager's enrollment listener): every caller
    # is ANONYMOUS, and only methods whose policy names "anonymous" may be called.
    ANONYMOUS = "anonymous"


ANONYMOUS = Identity("anonymous", "")


class GuardedService:
    """A grpclib handler object (``__mapping__``) enforcing a per-method role allow-list.

    ``policy`` maps a method name as in the ``.proto`` (``"RegisterNode"``) to the roles
    allowed to call it. With ``transport=Transport.INSECURE`` every caller is ``insecure``
    and that pseudo-role is allowed everywhere — the operator asked for no security.

    ``decode_limits`` maps a method name to the :class:`DecodeLimits` of its request,
    over :data:`common.wirelimits.DEFAULT_DECODE_LIMITS` (by method path) and
    ``default_decode_limits`` for every other method.
    """

    def __init__(
        self,
        service: Any,
        *,
        policy: Mapping[str, Collection[str]],
        transport: str = Transport.TLS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        observer: Observer | None = None,
        max_in_flight: Mapping[str, int | MethodLimit] | None = None,
        retry_after: float = 1.0,
        shed_observer: Callable[[str, str], None] | None = None,
        decode_limits: Mapping[str, DecodeLimits] | None = None,
        default_decode_limits: DecodeLimits | None = None,
        revocations: RevocationList | None = None,
        trust_roots: Collection[x509.Certificate] | None = None,
        max_streams_per_caller: int = DEFAULT_MAX_STREAMS_PER_CALLER,
        max_streams_per_role: Mapping[str, int] | None = None,
        stream_send_timeout: float = DEFAULT_STREAM_SEND_TIMEOUT,
        authenticate: HeaderAuth | None = None,
    ) -> None:
        self._service = service
        self._auth = authenticate
        # Server-streaming calls open per caller identity, and how long one reply may wait
        # for a client that does not read (see _stream_replies).
        self._max_streams = max_streams_per_caller
        # A caller that relays for others (a Manager following logs for every admin)
        # gets its own bound; the relaying side bounds each of its own callers.
        self._max_streams_by_role = dict(max_streams_per_role or {})
        self._stream_send_timeout = stream_send_timeout
        self._streams: dict[Identity, int] = {}
        self._policy = {name: frozenset(roles) for name, roles in policy.items()}
        self._transport = transport
        self._max = max_message_bytes
        self._request_timeout = request_timeout
        self._observer = observer
        # A bare number is a budget answered UNAVAILABLE (try another server).
        self._admission = Admission(
            {
                name: limit
                if isinstance(limit, MethodLimit)
                else MethodLimit(limit, Status.UNAVAILABLE)
                for name, limit in (max_in_flight or {}).items()
            },
            retry_after=retry_after,
            observer=shed_observer,
        )
        # The peer's identity per HTTP/2 connection: the certificate cannot change within
        # one, so it is read once rather than on every request.
        self._identities: weakref.WeakKeyDictionary[Any, Identity | None] = (
            weakref.WeakKeyDictionary()
        )
        # Certificate facts per connection, when revocations or root-only roles need them.
        self._peers: weakref.WeakKeyDictionary[Any, PeerCertificate | None] = (
            weakref.WeakKeyDictionary()
        )
        self._revocations = revocations
        self._root_subjects = [root.subject for root in trust_roots or ()]
        self._needs_peer = revocations is not None or bool(self._root_subjects)
        if revocations is not None:
            revocations.subscribe(self.close_revoked)
        self._decode_limits = dict(decode_limits or {})
        self._default_decode_limits = default_decode_limits or DecodeLimits()

    @property
    def max_message_bytes(self) -> int:
        """The largest request accepted (``make_server`` checks a connection can hold one)."""
        return self._max

    def _plan(self, path: str, name: str, request_type: Any) -> Plan:
        limits = self._decode_limits.get(name) or DEFAULT_DECODE_LIMITS.get(path)
        return plan_for(request_type, limits or self._default_decode_limits)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = {}
        for path, handler in self._service.__mapping__().items():
            name = path.rsplit("/", 1)[-1]
            impl = getattr(self._service, snake_case(name))
            plan = self._plan(path, name, handler.request_type)
            streaming = handler.cardinality is grpclib.const.Cardinality.UNARY_STREAM
            mapping[path] = grpclib.const.Handler(
                self._wrap(name, impl, handler.request_type, plan, streaming=streaming),
                handler.cardinality,
                handler.request_type,
                handler.reply_type,
            )
        return mapping

    async def _stream_replies(
        self,
        stream: grpclib.server.Stream[Any, Any],
        name: str,
        identity: Identity,
        replies: AsyncIterator[Any],
    ) -> None:
        """Send a server-streaming handler's replies until it ends or the client goes
        away (grpclib cancels the handler: the generator is closed).

        Bounded per caller: at most ``max_streams_per_caller`` open streams per identity
        (``RESOURCE_EXHAUSTED`` beyond), and a reply the client does not take within
        ``stream_send_timeout`` (its HTTP/2 window stays full) ends the stream with
        ``RESOURCE_EXHAUSTED`` — a slow reader is dropped, never buffered for. Handlers
        bound what they queue themselves, and end with ``RESOURCE_EXHAUSTED`` "too slow"
        when their queue overflows."""
        held = self._streams.get(identity, 0)
        limit = self._max_streams_by_role.get(identity.role, self._max_streams)
        if held >= limit:
            await _aclose(replies)
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{identity} already has {held} {'stream' if held == 1 else 'streams'} open "
                f"(at most {limit} per caller): close one first",
            )
        self._streams[identity] = held + 1
        try:
            async with contextlib.aclosing(replies):  # type: ignore[type-var]
                async for reply in replies:
                    try:
                        async with asyncio.timeout(self._stream_send_timeout):
                            await stream.send_message(reply)
                    except TimeoutError:
                        log.warning(
                            "dropped a %s stream of %s: the client did not read for %g s",
                            name,
                            identity,
                            self._stream_send_timeout,
                        )
                        connection = stream._stream.connection
                        if not connection.write_ready.is_set():
                            # It reads nothing at all on this connection (the socket is
                            # full): not even the trailers would go. Close it.
                            _close_connection(connection, b"not reading")
                        raise GRPCError(
                            Status.RESOURCE_EXHAUSTED,
                            f"too slow: a reply waited {self._stream_send_timeout:g} s for "
                            "the client to read",
                        ) from None
        finally:
            left = self._streams[identity] - 1
            if left:
                self._streams[identity] = left
            else:
                del self._streams[identity]

    def early_refusals(self) -> dict[str, EarlyRefusal]:
        """Per method path with a budget, the check :class:`~common.h2limits.HardenedServer`
        makes when a call's HEADERS arrive: the budget refusal (counted, observed and logged
        as in the handler), or None to let grpclib and the handler serve the call.

        A refusal there costs a header lookup and a trailers-only answer instead of a
        grpclib stream, handler task, deadline timer and trailers (the handler path spent
        ~0.4 ms of the Manager's core per refusal; under 3× load refusals outnumber
        served calls three to one). It only answers callers whose identity this service
        already worked out on the same connection (their first call takes the handler
        path), that their role may call the method, and whose certificate is not revoked
        — anyone else gets the handler's answer (``PERMISSION_DENIED``,
        ``UNAUTHENTICATED``), so a budget answer never goes to a caller that would not
        have been served, and the order of checks the handler makes is kept.
        """
        refusals: dict[str, EarlyRefusal] = {}
        for path, handler in self._service.__mapping__().items():
            name = path.rsplit("/", 1)[-1]
            streaming = handler.cardinality is grpclib.const.Cardinality.UNARY_STREAM
            limited = self._admission.limited(name) and not streaming
            if limited or self._auth is not None:
                refusals[path] = self._early_refusal(name, limited=limited)
        return refusals

    def _early_refusal(self, name: str, *, limited: bool = True) -> EarlyRefusal:
        admission, observer, auth = self._admission, self._observer, self._auth
        local = self._transport == Transport.LOCAL

        def refuse(
            connection: Any, deadline_left: float | None, headers: Mapping[str, str]
        ) -> GRPCError | None:
            identity = self._known_identity(connection)
            if identity is None or not self._allowed(name, identity):
                return None
            if self._revocations is not None and self._transport == Transport.TLS:
                peer = self._peers.get(connection)
                if peer is not None and self._revocations.check(peer) is not None:
                    return None
            started = time.perf_counter()
            if auth is not None:
                pid = _transport_pid(connection._transport) if local else 0
                try:
                    auth.check(name, headers, pid)
                except FleetError as exc:
                    if observer is not None:
                        observer(name, exc.status.name, time.perf_counter() - started)
                    return GRPCError(exc.status, str(exc))
            if not limited:
                return None
            refusal = admission.check(name, deadline_left)
            if refusal is not None and observer is not None:
                observer(name, refusal.status.name, time.perf_counter() - started)
            return refusal

        return refuse

    def _known_identity(self, connection: Any) -> Identity | None:
        """The identity :meth:`_identify` gave this connection's calls, if it did already."""
        if self._transport == Transport.TLS:
            return self._identities.get(connection)
        if self._transport == Transport.INSECURE:
            return INSECURE
        if self._transport == Transport.LOCAL:
            return LOCAL
        return ANONYMOUS

    def _identify(self, stream: grpclib.server.Stream[Any, Any]) -> Identity | None:
        if self._transport == Transport.INSECURE:
            return INSECURE
        if self._transport == Transport.LOCAL:
            return LOCAL
        if self._transport == Transport.ANONYMOUS:
            return ANONYMOUS
        connection = stream._stream.connection
        try:
            return self._identities[connection]
        except KeyError:
            pass
        identity = identity_from_cert(stream.peer.cert())
        if self._needs_peer:
            peer = self._peers[connection] = _peer_certificate(stream, self._root_subjects)
            if (
                identity is not None
                and self._root_subjects
                and identity.role in _ROOT_ONLY_ROLES
                and (peer is None or not peer.by_root)
            ):
                log.warning(
                    "refused %s certificate not signed by a fleet root (%s)",
                    identity,
                    _peer_addr(stream),
                )
                identity = None  # an issuing CA may only make node identities
        self._identities[connection] = identity
        return identity

    def _check_revoked(self, stream: grpclib.server.Stream[Any, Any], identity: Identity) -> None:
        if self._revocations is None or self._transport != Transport.TLS:
            return
        peer = self._peers.get(stream._stream.connection)
        if peer is None:
            return
        revoked = self._revocations.check(peer)
        if revoked is not None:
            log.warning(
                "refused revoked certificate %s of %s (%s)",
                peer.serial,
                identity,
                _peer_addr(stream),
            )
            raise GRPCError(
                Status.UNAUTHENTICATED,
                f"certificate {peer.serial} of {identity} is revoked"
                + (f": {revoked.reason}" if revoked.reason else ""),
            )

    def close_revoked(self) -> int:
        """Close every open connection whose certificate the revocation list now covers;
        return how many. Called by the list on every change."""
        if self._revocations is None:
            return 0
        closed = 0
        for connection, peer in list(self._peers.items()):
            if peer is None or self._revocations.check(peer) is None:
                continue
            self._peers.pop(connection, None)
            self._identities.pop(connection, None)
            call = _current.get(None)
            if call is not None and call.connection is connection:
                # The call revoking its own certificate: answer it first, then close.
                asyncio.get_running_loop().call_later(
                    _SELF_CLOSE_DELAY, _close_connection, connection, b"certificate revoked"
                )
            elif not _close_connection(connection, b"certificate revoked"):
                continue
            closed += 1
            log.warning(
                "closed a connection of revoked certificate %s (%s)", peer.serial, peer.identity
            )
        self._revocations.closed += closed
        return closed

    def _allowed(self, name: str, identity: Identity) -> bool:
        if identity is INSECURE:
            return True
        return identity.role in self._policy.get(name, frozenset())

    def _wrap(
        self,
        name: str,
        impl: Callable[[Any], Any],
        request_type: Any,
        plan: Plan,
        *,
        streaming: bool = False,
    ) -> Any:
        admission = self._admission
        # Streams are bounded per caller (_stream_replies), not by in-flight budgets: a
        # follow holds its call for minutes and would starve the method's short calls.
        limited = admission.limited(name) and not streaming

        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            started = time.perf_counter()
            code = "OK"
            request_id = f"{_REQUEST_PREFIX}-{next(_request_numbers)}"
            counted = False
            served = 0.0  # when the request was read: the service time counts from there
            try:
                identity = self._identify(stream)
                if identity is None or not self._allowed(name, identity):
                    who = str(identity) if identity else "a peer without a Fleet identity"
                    log.warning("refused %s from %s (%s)", name, who, _peer_addr(stream))
                    raise GRPCError(Status.PERMISSION_DENIED, f"{who} may not call {name}")
                self._check_revoked(stream, identity)
                peer_pid = _peer_pid(stream) if self._transport == Transport.LOCAL else 0
                principal, max_bytes = None, self._max
                if self._auth is not None:
                    # Before the request is read (and on servers without early refusals).
                    metadata = cast("Mapping[str, str]", stream.metadata or {})
                    principal = self._auth.check(name, metadata, peer_pid)
                    if principal is None:
                        max_bytes = min(max_bytes, self._auth.max_bytes_without)
                if limited:
                    deadline = stream.deadline
                    admission.admit(name, deadline.time_remaining() if deadline else None)
                    counted = True
                clock = _ReadClock(stream, self._request_timeout)
                try:
                    async with asyncio.timeout_at(clock.first_deadline()) as clock.timer:
                        request = await _recv_bounded(
                            stream,
                            request_type,
                            max_bytes,
                            plan,
                            clock,
                            without=self._auth if max_bytes < self._max else None,
                        )
                except TimeoutError:
                    raise clock.expired() from None
                served = time.perf_counter()
                token = _current.set(
                    CallContext(
                        identity,
                        name,
                        request_id,
                        _peer_addr(stream),
                        peer_pid,
                        connection=stream._stream.connection,
                        principal=principal,
                    )
                )
                if streaming:
                    try:
                        await self._stream_replies(stream, name, identity, impl(request))
                    finally:
                        _current.reset(token)
                        served = 0.0  # a stream's length is not a service time
                else:
                    try:
                        reply = await impl(request)
                    finally:
                        _current.reset(token)
                    await stream.send_message(reply)
            except GRPCError as exc:
                code = exc.status.name
                raise
            except FleetError as exc:
                code = exc.status.name
                raise GRPCError(exc.status, str(exc)) from None
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("request %s (%s) failed", request_id, name)
                raise GRPCError(
                    Status.INTERNAL, f"internal error (request id {request_id})"
                ) from None
            finally:
                if counted:
                    # A body that never came is the caller's delay, not the service time.
                    admission.release(name, time.perf_counter() - served if served else None)
                if self._observer is not None:
                    self._observer(name, code, time.perf_counter() - started)

        return handle


# A caller that revoked its own certificate gets its answer before its connection goes.
_SELF_CLOSE_DELAY = 1.0

# Roles only a fleet root may grant (see GuardedService: trust_roots).
_ROOT_ONLY_ROLES = frozenset({"manager", "admin"})


def _peer_certificate(
    stream: grpclib.server.Stream[Any, Any], root_subjects: list[x509.Name]
) -> PeerCertificate | None:
    ssl_object = stream._stream.connection._transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        return PeerCertificate.from_der(der, root_subjects=root_subjects)
    except ValueError:
        return None


async def _aclose(replies: Any) -> None:
    close = getattr(replies, "aclose", None)
    if close is not None:
        await close()


def _close_connection(connection: Any, debug: bytes) -> bool:
    """GOAWAY (when the connection still speaks HTTP/2) and close its transport; False
    when grpclib had closed it already (it drops ``_transport`` then)."""
    transport = getattr(connection, "_transport", None)
    if transport is None or transport.is_closing():
        return False
    try:
        connection._connection.close_connection(additional_data=debug)
        connection.flush()
    except Exception:  # the connection may be half gone already: closing is what matters
        log.debug("no GOAWAY on a closing connection", exc_info=True)
    transport.close()
    return True


def _peer_pid(stream: grpclib.server.Stream[Any, Any]) -> int:
    """The connecting process' pid on a Unix socket (Linux SO_PEERCRED), 0 if unknown."""
    return _transport_pid(stream.peer._transport)


def _transport_pid(transport: Any) -> int:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return 0
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return int(struct.unpack("3i", creds)[0])


def _peer_addr(stream: grpclib.server.Stream[Any, Any]) -> str:
    addr = stream.peer.addr()
    if not addr:
        return "local"
    return f"{addr[0]}:{addr[1]}"


class _ReadClock:
    """When reading one request gives up: the whole request within ``request_timeout``
    and, on a server built by :func:`make_server`, no ``body_stall_timeout`` without its
    prefix, then without 16 KiB more of its body (or its end). One asyncio timeout, moved
    forward as bytes arrive (a timeout context per read would cost ~20 µs a request)."""

    __slots__ = ("connection", "deadline", "got", "request_timeout", "size", "stall", "timer")

    def __init__(self, stream: grpclib.server.Stream[Any, Any], request_timeout: float) -> None:
        connection = stream._stream.connection
        self.connection = connection if isinstance(connection, ShieldedConnection) else None
        self.stall = self.connection.stall_timeout if self.connection is not None else None
        self.request_timeout = request_timeout
        self.deadline = asyncio.get_running_loop().time() + request_timeout
        self.timer: asyncio.Timeout | None = None
        self.got, self.size = 0, 5  # request bytes read, and announced (prefix included)

    def first_deadline(self) -> float:
        if self.stall is None:
            return self.deadline
        return min(self.deadline, asyncio.get_running_loop().time() + self.stall)

    def progressed(self) -> None:
        """Bytes arrived: the stall deadline starts again."""
        if self.stall is not None and self.timer is not None:
            now = asyncio.get_running_loop().time()
            self.timer.reschedule(min(self.deadline, now + self.stall))

    def expired(self) -> GRPCError:
        """The status for a read that timed out (a stalled body is also logged)."""
        if self.connection is None or asyncio.get_running_loop().time() >= self.deadline:
            return GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"request not received within {self.request_timeout:g} s",
            )
        shield, stall = self.connection.shield, self.stall
        shield.count("stalled")
        shield.note(
            "stalled",
            self.connection.peer,
            f"dropped a request body from {self.connection.label}: "
            f"{self.got} of {self.size} bytes, nothing for {stall:g} s",
        )
        return GRPCError(
            Status.DEADLINE_EXCEEDED,
            f"request body stalled: {self.got} of {self.size} bytes, "
            f"nothing received for {stall:g} s",
        )


async def _recv_bounded(
    stream: grpclib.server.Stream[Any, Any],
    request_type: Any,
    max_bytes: int,
    plan: Plan,
    clock: _ReadClock,
    *,
    without: HeaderAuth | None = None,
) -> Any:
    """Read one length-prefixed message, refusing it from its prefix when too large, and
    from its wire shape when it would cost too much to decode. ``without``: the caller
    sent no metadata credentials, and ``max_bytes`` is what it may send without them."""
    # grpclib has no receive-size limit of its own: read the frame here instead.
    raw = stream._stream
    try:
        prefix = await _read(raw, 5, clock)
    except AssertionError:  # grpclib's way of saying the stream ended early
        prefix = b""
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "request carries no message")
    if prefix[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = int.from_bytes(prefix[1:5], "big")
    if without is not None and length > max_bytes:
        raise GRPCError(
            Status.UNAUTHENTICATED,
            f"a request of {length} bytes must carry {without.hint} "
            f"(at most {max_bytes} bytes without)",
        )
    if length > max_bytes:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request of {length} bytes exceeds the {max_bytes}-byte limit",
        )
    if clock.connection is not None and raw.id is not None:
        refused = clock.connection.admit(raw.id, 5 + length)
        if refused is not None:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"server busy: {refused}; retry with backoff"
            )
    clock.size = 5 + length
    try:
        if length:
            clock.progressed()  # the prefix arrived
            body = await _read(raw, length, clock)
        else:
            body = b""
    except AssertionError:  # the stream ended before the announced length
        body = b""
    if len(body) != length:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message is truncated")
    try:
        plan.check(body)
    except DecodeRefused as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
    try:
        # ``FromString``: betterproto messages and protobuf's (upb) both have it, so a
        # handler table may name either kind of request class.
        return request_type.FromString(body)
    except Exception:
        raise GRPCError(
            Status.INVALID_ARGUMENT, "request is not a valid protobuf message"
        ) from None


# Bytes read at a time while watching a body for progress: one HTTP/2 frame, so a body
# counts as progressing while at least 16 KiB arrive per body_stall_timeout.
_READ_CHUNK = 16 * 1024


async def _read(raw: Any, size: int, clock: _ReadClock) -> bytes:
    """``size`` bytes of the request; with a stall timeout, a chunk at a time, the clock
    moved forward after each."""
    if clock.stall is None or size <= _READ_CHUNK:
        data = bytes(await raw.recv_data(size))
        clock.got += len(data)
        return data
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = await raw.recv_data(min(size - got, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        clock.got += len(chunk)
        if got < size:
            clock.progressed()
    return b"".join(chunks)


async def wait_server_closed(server: grpclib.server.Server, *, timeout: float = 1.0) -> None:
    """``server.wait_closed()`` after ``server.close()``, waiting at most ``timeout`` seconds.

    grpclib's ``close()`` cancels the running handlers but leaves connections open, and
    from Python 3.12 ``asyncio.Server.wait_closed()`` also waits for every connection to
    drop. A peer holding an idle channel (a Daemon's link to its Manager, the Manager's
    pooled channel to a Daemon, an agent's SDK connection) would then block shutdown for
    as long as that peer stays up — forever when both sides shut down at once. The
    handlers were cancelled by ``close()``, so past this bound only idle connections are
    left, and they go with the process.
    """
    try:
        await asyncio.wait_for(server.wait_closed(), timeout)
    except TimeoutError:
        log.debug("server still had open connections after %.1fs; not waiting for them", timeout)
