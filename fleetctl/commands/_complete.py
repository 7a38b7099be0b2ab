"""Shell completion of node and agent ids and spec names, asked from the Manager.

Completion runs without the root callback (Click parses in resilient mode), so the
connection settings are rebuilt here from the parsed global options and the environment.
Any failure — no settings, Manager down, slow — completes nothing rather than printing an
error into the user's shell; the call is capped at two seconds.
"""

import os
from typing import Any

import typer

COMPLETION_TIMEOUT = "2s"


def _state(ctx: typer.Context) -> Any:
    from ._shared import State

    params = ctx.find_root().params
    flags = {name: params.get(name) for name in ("manager", "ca", "cert", "key", "insecure")}
    flags["timeout"] = COMPLETION_TIMEOUT
    return State(
        flags=flags,
        config_flag=params.get("config_file"),
        debug=False,
        environ=dict(os.environ),
        _settings=None,
    )


def _ask(ctx: typer.Context, *, node: str = "") -> tuple[list[Any], list[Any]]:
    from schema import admin_pb2

    from ._shared import run

    st = _state(ctx)

    async def go() -> tuple[list[Any], list[Any]]:
        async with st.connect() as conn:
            stub = conn.admin()
            nodes = (
                await conn.call(stub.ListNodes(admin_pb2.ListNodesRequest(), timeout=conn.timeout))
            ).nodes
            agents = (
                await conn.call(
                    stub.ListAgents(admin_pb2.ListAgentsRequest(node_id=node), timeout=conn.timeout)
                )
            ).agents
            return list(nodes), list(agents)

    return run(go())


def complete_node(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Node ids, with their status as the help text."""
    try:
        nodes, _ = _ask(ctx)
    except Exception:
        return []
    return [(n.node_id, n.status) for n in nodes if n.node_id.startswith(incomplete)]


def complete_node_or_agent(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Node ids, and agent ids that are unique in the fleet (usable without NODE)."""
    try:
        nodes, agents = _ask(ctx)
    except Exception:
        return []
    out = [(n.node_id, f"node, {n.status}") for n in nodes]
    count: dict[str, list[str]] = {}
    for a in agents:
        count.setdefault(a.id, []).append(a.node_id)
    out += [(aid, f"agent on {where[0]}") for aid, where in count.items() if len(where) == 1]
    if ctx.params.get("all_nodes"):
        out = [(aid, f"agent on {len(w)} node(s)") for aid, w in count.items()]
    return sorted(c for c in out if c[0].startswith(incomplete))


def complete_agent(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Agent ids on the node given before (or anywhere)."""
    node = ctx.params.get("first") or ctx.params.get("node") or ctx.params.get("node_opt") or ""
    try:
        _, agents = _ask(ctx, node=node)
    except Exception:
        return []
    seen: dict[str, str] = {}
    for a in agents:
        seen.setdefault(a.id, a.status)
    return sorted((aid, st) for aid, st in seen.items() if aid.startswith(incomplete))


def complete_spec(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Spec names, with their revision as the help text."""
    from schema import admin_pb2

    from ._shared import run

    st = _state(ctx)

    async def go() -> list[Any]:
        async with st.connect() as conn:
            reply = await conn.call(
                conn.admin().ListSpecs(admin_pb2.ListSpecsRequest(), timeout=conn.timeout)
            )
            return list(reply.specs)

    try:
        specs = run(go())
    except Exception:
        return []
    return sorted(
        (s.name, f"spec, revision {s.revision}") for s in specs if s.name.startswith(incomplete)
    )


def complete_token(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Ids of the join tokens that still work, with their labels as the help text."""
    from schema import admin_pb2

    from ._shared import run

    st = _state(ctx)

    async def go() -> list[Any]:
        async with st.connect() as conn:
            reply = await conn.call(
                conn.admin().ListJoinTokens(admin_pb2.ListJoinTokensRequest(), timeout=conn.timeout)
            )
            return list(reply.tokens)

    try:
        tokens = run(go())
    except Exception:
        return []
    return sorted(
        (t.id, ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "token")
        for t in tokens
        if t.id.startswith(incomplete)
    )


def complete_serial(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Serials of the certificates not yet revoked, with their identity as the help text."""
    from schema import admin_pb2

    from ._shared import run

    st = _state(ctx)

    async def go() -> list[Any]:
        async with st.connect() as conn:
            reply = await conn.call(
                conn.admin().ListCertificates(
                    admin_pb2.ListCertificatesRequest(), timeout=conn.timeout
                )
            )
            return list(reply.certificates)

    try:
        certs = run(go())
    except Exception:
        return []
    return sorted(
        (c.serial, c.identity)
        for c in certs
        if c.serial and not c.revoked_at and c.serial.startswith(incomplete.lower())
    )
