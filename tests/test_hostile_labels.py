"""Text that disguises what fleetctl shows is refused like C0 controls (issue 11, item 12).

A label value, hostname or other free-text field holding a C1 control (U+0080–U+009F:
8-bit terminal escapes such as CSI U+009B), DEL, a bidirectional embedding, override or
isolate (U+202A–U+202E, U+2066–U+2069: "Trojan Source") or a Unicode line separator can
make a fleetctl table show something other than what is stored — ``env=prod`` that is
really ``env=dorp``, a row that seems to end early. ``common.validate.check_text`` now
refuses them as it refuses C0 controls; right-to-left text and its marks stay allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness.manager import ManagerProc, admin_channel, node_channel, start_manager

from common.errors import InvalidArgument
from common.validate import check_labels, check_text
from schema import admin_pb, manager_pb

DISGUISES = {
    "C1 NEL": "prod\x85",
    "C1 CSI (8-bit escape)": "\x9b31mprod",
    "DEL": "pro\x7fd",
    "right-to-left override": "\u202edorp",
    "left-to-right embedding": "\u202aprod",
    "first-strong isolate": "\u2068prod\u2069",
    "line separator": "prod\u2028x",
    "paragraph separator": "prod\u2029x",
    "C0 escape (as before)": "\x1b[31mprod",
}
ALLOWED = ["prod", "tab\tseparated", "café", "שלום", "עברית\u200f", "مرحبا\u061c", "日本語"]


@pytest.mark.parametrize("value", DISGUISES.values(), ids=DISGUISES.keys())
def test_check_text_refuses_disguising_characters(value: str) -> None:
    with pytest.raises(InvalidArgument, match="labels\\[env\\] contains"):
        check_labels("labels", {"env": value})


@pytest.mark.parametrize("value", ALLOWED)
def test_check_text_keeps_real_text(value: str) -> None:
    assert check_text("hostname", value) == value


def test_check_text_is_fast_on_a_megabyte() -> None:
    """PushUpdate's config_json is checked with this at up to 1 MiB: C speed, not a
    Python loop per character (~50 ms a megabyte, on the event loop)."""
    import time

    text = "é" + "x" * (1024 * 1024 - 1)
    started = time.perf_counter()
    for _ in range(10):
        check_text("config_json", text, max_len=1024 * 1024)
    assert (time.perf_counter() - started) / 10 < 0.01


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[ManagerProc]:
    proc = start_manager(tmp_path_factory.mktemp("labels-manager"), certs, http_port=None)
    try:
        yield proc
    finally:
        proc.stop()


def test_the_manager_refuses_disguised_labels_and_hostnames(
    manager: ManagerProc, certs: Path
) -> None:
    async def scenario() -> list[tuple[str, Status | None, str]]:
        node = node_channel(certs, manager.grpc_port, "node-a")
        admin = admin_channel(certs, manager.grpc_port)
        outcomes: list[tuple[str, Status | None, str]] = []
        try:
            stub = manager_pb.ManagerServiceStub(node, timeout=10)
            admin_stub = admin_pb.AdminServiceStub(admin, timeout=10)
            calls = []
            for name, value in DISGUISES.items():
                calls += [
                    (f"label {name}", stub.register_node(
                        manager_pb.RegisterNodeRequest(node_id="node-a", labels={"env": value})
                    )),
                    (f"hostname {name}", stub.register_node(
                        manager_pb.RegisterNodeRequest(node_id="node-a", hostname=value)
                    )),
                    (f"label filter {name}", admin_stub.list_nodes(
                        admin_pb.ListNodesRequest(labels={"env": value})
                    )),
                ]  # fmt: skip
            for what, call in calls:
                try:
                    await call
                    outcomes.append((what, None, ""))
                except GRPCError as exc:
                    outcomes.append((what, exc.status, exc.message or ""))
            # Real right-to-left text is served and stored as sent.
            reply = await stub.register_node(
                manager_pb.RegisterNodeRequest(
                    node_id="node-a", hostname="שרת-1", labels={"team": "עברית\u200f"}
                )
            )
            assert reply.success
            listed = await admin_stub.list_nodes(admin_pb.ListNodesRequest())
            (row,) = [n for n in listed.nodes if n.node_id == "node-a"]
            assert (row.hostname, dict(row.labels)) == ("שרת-1", {"team": "עברית\u200f"})
        finally:
            node.close()
            admin.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    for what, status, message in outcomes:
        assert status is Status.INVALID_ARGUMENT, (what, status, message)
        assert "contains" in message, (what, message)
