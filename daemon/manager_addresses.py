"""Where the Manager is: the configured addresses, expanded through DNS, taken in turn.

``manager.address`` holds one or more ``HOST:PORT`` entries (checked by
:func:`daemon.config.manager_addresses`). A host that is not an IP address is resolved
with the event loop's ``getaddrinfo`` (in the loop's executor: never blocking the
Daemon), and each of its A/AAAA records becomes an :class:`Endpoint` of its own, so a
DNS name with three records is three Managers to fail over between, like a list of
three addresses.

The Daemon talks to one endpoint at a time and moves to the next one only when that one
fails (:meth:`ManagerAddresses.advance`); it never moves back by itself while an endpoint
answers. Where it *starts* is fixed per node (a hash of the node id), so a fleet given
the same list spreads over the Managers instead of all piling onto the first one. Names
are resolved again once every endpoint failed in a row (and whenever no endpoint is
known), so a Manager that moved to a new address is found without a Daemon restart; a
name that stops resolving keeps its last known addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import split_hostport

# loop.getaddrinfo's shape: (host, port, *, family, type, proto, flags) -> addrinfo list.
Resolver = Callable[..., Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class Endpoint:
    """One Manager address to dial: an IP (or the configured host) and a port.

    ``source`` is the ``manager.address`` entry it comes from (``mgr.example.net:50051``
    for each address of that name).
    """

    host: str
    port: int
    source: str

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.address == self.source:
            return self.address
        return f"{self.address} ({split_hostport(self.source)[0]})"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def start_index(key: str, count: int) -> int:
    """Where a node starts in a list of ``count`` endpoints: the same on every start."""
    return zlib.crc32(key.encode()) % count if count else 0


class ManagerAddresses:
    """The endpoints of ``manager.address`` and the one in use (see the module doc).

    ``resolve`` is the event loop's ``getaddrinfo`` unless given (tests hand in a
    resolver that answers like a DNS server with several records). Each lookup is bounded
    by ``timeout``.
    """

    def __init__(
        self,
        *,
        configured: Sequence[str],
        start_key: str,
        timeout: float,
        resolve: Resolver | None = None,
    ) -> None:
        if not configured:
            raise ValueError("no Manager address configured")
        self._entries = [(entry, *split_hostport(entry)) for entry in configured]
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
        found: list[Endpoint] = []
        for entry, host, port in self._entries:
            if is_ip(host):
                found.append(Endpoint(host, port, entry))
                continue
            try:
                found.extend(await self._lookup(entry, host, port))
            except (OSError, TimeoutError, UnicodeError) as exc:
                errors.append(f"cannot resolve {host}: {_why(exc)}")
                found.extend(self._known.get(entry, ()))
        unique: list[Endpoint] = []
        for endpoint in found:  # two entries naming one address: dial it once per round
            if all((e.host, e.port) != (endpoint.host, endpoint.port) for e in unique):
                unique.append(endpoint)
        self.errors = errors
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
        # asyncio.timeout, not wait_for: see manager_client._wait (a lost cancellation).
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
