"""EnrollService: what a host calls on the enrollment listener before it has a certificate.

Callers are anonymous (server-authenticated TLS only), so everything here is bounded
per source address: ``enroll.join_rate_per_minute`` Join attempts a minute, a refused one
counting double, past which ``RESOURCE_EXHAUSTED`` says when to retry. Each join and each
refusal is logged with the peer and the token id when one can be read (never a secret);
refusals for the rate limit are logged at most once a minute per address.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from common.errors import FleetError, ResourceExhausted
from common.ratelimit import LogLimiter, TokenBuckets
from common.rpc import current_call
from schema.gen.fleet.enroll import v1 as enroll_pb

from .issuer import NodeIssuer
from .tokens import token_id_of

log = logging.getLogger(__name__)


class EnrollService(enroll_pb.EnrollServiceBase):
    """GetCA and Join (schema/proto/fleet/enroll/v1/enroll.proto)."""

    def __init__(
        self,
        *,
        issuer: NodeIssuer,
        roots_pem: bytes,
        manager_addresses: Sequence[str],
        joins_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._roots_pem = roots_pem.decode()
        self._manager_addresses = list(manager_addresses)
        self._buckets = TokenBuckets(capacity=joins_per_minute, window=60.0)
        self._limited_log = LogLimiter(interval=60.0)
        self._clock = clock

    async def get_ca(self, get_ca_request: enroll_pb.GetCaRequest) -> enroll_pb.GetCaResponse:
        return enroll_pb.GetCaResponse(ca_pem=self._roots_pem)

    async def join(self, join_request: enroll_pb.JoinRequest) -> enroll_pb.JoinResponse:
        request = join_request
        peer = current_call().peer
        host = peer.rsplit(":", 1)[0]
        token_id = token_id_of(request.token) or "?"
        node = request.node_id[:128] or "?"
        wait = self._buckets.take(host, 1, self._clock())
        if wait:
            retry = max(1, math.ceil(wait))
            held = self._limited_log.allow(host, self._clock())
            if held is not None:
                more = f" ({held} more since the last line)" if held else ""
                log.warning(
                    "join refused: too many attempts from %s (node %r, token %s)%s",
                    peer,
                    node,
                    token_id,
                    more,
                )
            raise ResourceExhausted(f"too many join attempts from {host}: retry in {retry} s")
        try:
            issued = await self._issuer.join(
                token=request.token,
                node_id=request.node_id,
                csr_pem=request.csr_pem,
                hostname=request.hostname,
            )
        except FleetError as exc:
            # A refused attempt costs one more: guessing is slower than joining.
            self._buckets.take(host, 1, self._clock())
            log.warning(
                "join refused: %s %s (node %r, token %s, from %s)",
                exc.status.name,
                exc,
                node,
                token_id,
                peer,
            )
            raise
        log.info(
            "node %s joined with token %s from %s (hostname %r, certificate %s until %s)",
            issued.node_id,
            token_id,
            peer,
            request.hostname[:255],
            issued.serial,
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(issued.not_after)),
        )
        return enroll_pb.JoinResponse(
            node_id=issued.node_id,
            cert_pem=issued.cert_pem.decode(),
            ca_pem=issued.ca_pem.decode(),
            labels=issued.labels,
            manager_addresses=self._manager_addresses,
            serial=issued.serial,
            not_after=issued.not_after,
        )
