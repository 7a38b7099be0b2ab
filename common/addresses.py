"""Where the Manager is: ``HOST:PORT`` lists, DNS names with several records, taken in turn.

Both clients of the Manager accept one or more addresses — the Daemon's
``manager.address``, fleetctl's ``FLEET_MANAGER`` (and ``--manager``, and its config
file's ``manager``) — written ``host1:50051,host2:50051``. :func:`split_hostport` and
:func:`parse_address_list` check them, naming the entry that is wrong.

A host that is not an IP address is resolved with the event loop's ``getaddrinfo`` (in the
loop's executor: never blocking the caller), and each of its A/AAAA records becomes an
:class:`Endpoint` of its own, so a DNS name with three records is three Managers to fail
over between, like a list of three addresses (:class:`ManagerAddresses`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

# loop.getaddrinfo's shape: (host, port, *, family, type, proto, flags) -> addrinfo list.
Resolver = Callable[..., Awaitable[list[tuple[Any, ...]]]]

MAX_ADDRESSES = 32
_NAME = re.compile(r"[A-Za-z0-9._\-]+")


class AddressError(ValueError):
    """An address (or a list of them) that cannot be dialled; ``entry`` is the bad part."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"{entry!r}: {reason}")
        self.entry = entry
        self.reason = reason


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def format_hostport(host: str, port: int) -> str:
    """``host:port``, ``[v6]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` (and ``host``, ``[v6]`` or a bare IPv6 address when
    ``default_port`` is given) → ``(host, port)``; :class:`AddressError` otherwise."""
    s = text.strip()
    port_text: str | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise AddressError(text, "unclosed '['")
        host, rest = s[1:end], s[end + 1 :]
        if not (":" in host and is_ip(host)):
            raise AddressError(text, f"{host!r} in brackets is not an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise AddressError(text, "expected HOST:PORT")
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif ":" in s and is_ip(s) and default_port is not None:
        host = s  # an IPv6 address without brackets cannot carry a port
    else:
        host = s
        if ":" in s:
            raise AddressError(text, "expected HOST:PORT")
    if not host or not (is_ip(host) or _NAME.fullmatch(host)):
        raise AddressError(text, "expected HOST:PORT")
    if port_text is None:
        if default_port is None:
            raise AddressError(text, "expected HOST:PORT (the port is missing)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddressError(text, "the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_address_list(text: str, *, default_port: int | None = None) -> tuple[str, ...]:
    """``"a:1,b:2"`` → ``("a:1", "b:2")``, each entry checked by :func:`split_hostport`
    and written back as ``host:port``; :class:`AddressError` naming the bad entry."""
    if not text.strip():
        raise AddressError(text, "empty: give HOST:PORT, or a list of them")
    entries = [part.strip() for part in text.split(",")]
    if "" in entries:
        raise AddressError(text, "has an empty entry")
    if len(entries) > MAX_ADDRESSES:
        raise AddressError(text, f"lists {len(entries)} addresses (at most {MAX_ADDRESSES})")
    out: list[str] = []
    for entry in entries:
        address = format_hostport(*split_hostport(entry, default_port=default_port))
        if address in out:
            raise AddressError(entry, "listed twice")
        out.append(address)
    return tuple(out)


def _split_checked(entry: str) -> tuple[str, int]:
    """(host, port) of an entry already checked to be ``HOST:PORT`` (``[v6]:port`` too)."""
    host, _sep, port = entry.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Endpoint:
    """One Manager address to dial: an IP (or the configured host) and a port.

    ``source`` is the configured entry it comes from (``mgr.example.net:50051`` for each
    address of that name).
    """

    host: str
    port: int
    source: str

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``)."""
        return format_hostport(self.host, self.port)

    @property
    def name(self) -> str:
        """The DNS name this address was found under ("" when it was given as is)."""
        return "" if self.address == self.source else _split_checked(self.source)[0]

    def __str__(self) -> str:
        return f"{self.address} ({self.name})" if self.name else self.address


def start_index(key: str | None, count: int) -> int:
    """Where a client starts in a list of ``count`` endpoints: the same on every start
    for one ``key`` (a node id); the first one when there is no key."""
    return zlib.crc32(key.encode()) % count if count and key is not None else 0


class ManagerAddresses:
    """The endpoints of the configured addresses and the one in use.

    ``configured`` entries are ``HOST:PORT`` (checked beforehand). The client talks to one
    endpoint at a time and moves to the next one only when that one fails
    (:meth:`advance`); it never moves back by itself while an endpoint answers. Where it
    *starts* is :func:`start_index` of ``start_key`` (None: the first). Names are resolved
    again once every endpoint failed in a row (and whenever no endpoint is known), so a
    Manager that moved to a new address is found without a restart; a name that stops
    resolving keeps its last known addresses.

    ``resolve`` is the event loop's ``getaddrinfo`` unless given (tests hand in a
    resolver that answers like a DNS server with several records). Each lookup is bounded
    by ``timeout``.
    """

    def __init__(
        self,
        *,
        configured: Sequence[str],
        timeout: float,
        start_key: str | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        if not configured:
            raise ValueError("no Manager address configured")
        self._entries = [(entry, *_split_checked(entry)) for entry in configured]
        self._start_key = start_key
        self._timeout = timeout
        self._resolve = resolve
        self._endpoints: list[Endpoint] = []
        self._known: dict[str, list[Endpoint]] = {}  # last good answer per entry
        self._index = 0
        self._failures = 0  # consecutive failed attempts since the last success
        self._resolved_once = False
        self.lookups = 0
        self.errors: list[str] = []  # what went wrong in the last lookup round
        self.unresolved: dict[str, str] = {}  # entry -> why, in the last lookup round

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(entry for entry, _host, _port in self._entries)

    @property
    def needs_lookup(self) -> bool:
        """Whether any entry is a name (to be resolved) rather than an IP address."""
        return not all(is_ip(host) for _entry, host, _port in self._entries)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._endpoints)

    @property
    def current(self) -> Endpoint | None:
        return self._endpoints[self._index] if self._endpoints else None

    async def resolve(self) -> Endpoint | None:
        """Look every name up again; keep the current endpoint if it is still listed.

        Returns the current endpoint (``None`` while no address is known; ``errors``
        then says why).
        """
        current = self.current
        errors: list[str] = []
        unresolved: dict[str, str] = {}
        found: list[Endpoint] = []
        for entry, host, port in self._entries:
            if is_ip(host):
                found.append(Endpoint(host, port, entry))
                continue
            try:
                found.extend(await self._lookup(entry, host, port))
            except (OSError, TimeoutError, UnicodeError) as exc:
                errors.append(f"cannot resolve {host}: {_why(exc)}")
                unresolved[entry] = _why(exc)
                found.extend(self._known.get(entry, ()))
        unique: list[Endpoint] = []
        for endpoint in found:  # two entries naming one address: dial it once per round
            if all((e.host, e.port) != (endpoint.host, endpoint.port) for e in unique):
                unique.append(endpoint)
        self.errors = errors
        self.unresolved = unresolved
        self._endpoints = unique
        if not unique:
            self._index = 0
        elif current is not None and current in unique:
            self._index = unique.index(current)
        elif not self._resolved_once or current is None:
            self._index = start_index(self._start_key, len(unique))
        else:
            self._index = min(self._index, len(unique) - 1)
        if unique:
            self._resolved_once = True
        return self.current

    async def _lookup(self, entry: str, host: str, port: int) -> list[Endpoint]:
        self.lookups += 1
        resolve = self._resolve or asyncio.get_running_loop().getaddrinfo
        # asyncio.timeout, not wait_for: see daemon/manager_client._wait (a lost cancellation).
        async with asyncio.timeout(self._timeout):
            infos = await resolve(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        endpoints = [
            Endpoint(str(info[4][0]), port, entry)
            for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)
        ]
        if not endpoints:
            raise OSError(f"no IPv4 or IPv6 address for {host}")
        endpoints = list(dict.fromkeys(endpoints))
        self._known[entry] = endpoints
        return endpoints

    async def advance(self) -> Endpoint | None:
        """The current endpoint failed: the next one (names resolved again once every
        endpoint failed in a row). ``None`` while no address is known."""
        known = bool(self._endpoints)
        self._failures += 1
        if not known or self._failures >= len(self._endpoints):
            self._failures = 0
            await self.resolve()
            if not known or len(self._endpoints) <= 1:
                return self.current  # nothing to move on to
        self._index = (self._index + 1) % len(self._endpoints)
        return self.current

    def succeeded(self) -> None:
        """The current endpoint answered."""
        self._failures = 0


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "lookup timed out"
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
