"""AdminService.FollowAgentLog: an agent's log followed through the Manager.

The Manager holds no log lines: it opens ``DaemonService.FollowAgentLog`` on the agent's
node (:meth:`~manager.daemon_pool.DaemonClientPool.stream`) and passes each chunk on as it
comes, so the bounds are the Daemon's (whole lines, at most 64 KiB a chunk, ``skipped``
for a follower that fell behind) and the guard's (streams per admin, a client that does
not read). Either side going away ends both: the admin's client leaving closes
:func:`relay`, which cancels the Daemon's stream; the Daemon's stream ending ends the
admin's (``UNAVAILABLE`` naming the node when its Daemon became unreachable).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from schema import admin_pb, daemon_pb

from .daemon_pool import DaemonClientPool
from .store.models import Node

log = logging.getLogger(__name__)


async def relay(
    pool: DaemonClientPool, node: Node, agent_id: str, request: admin_pb.FollowAgentLogRequest
) -> AsyncGenerator[admin_pb.FollowAgentLogResponse, None]:
    """The Daemon's chunks of ``agent_id``'s log on ``node``, as FollowAgentLogResponses."""
    chunks = pool.stream(
        node.node_id,
        node.daemon_address,
        "follow_agent_log",
        daemon_pb.AgentLogRequest(agent_id=agent_id, stream=request.stream, lines=request.lines),
    )
    log.debug("following %s %s on node %s", agent_id, request.stream or "stderr", node.node_id)
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield admin_pb.FollowAgentLogResponse(node_id=node.node_id, chunk=chunk)
    finally:
        log.debug("stopped following %s on node %s", agent_id, node.node_id)
