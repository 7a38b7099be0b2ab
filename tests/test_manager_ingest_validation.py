"""ReportMetrics validation once the Manager has cached what it already validated.

The Manager checks a metric type name or value key once and then trusts its cache, and
accepts a sample's values when their sum is finite. These tests prime those caches with a
valid report and then send each kind of bad input: every one must still be refused with
the message naming the field, and nothing of a refused report may be stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from harness.manager import ManagerProc, manager_rpc, manager_rpc_error, start_manager

from schema import admin_pb, manager_pb


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[ManagerProc]:
    mgr = start_manager(tmp_path_factory.mktemp("ingest"), certs)
    try:
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        yield mgr
    finally:
        assert mgr.stop() == 0


def _report(certs: Path, mgr: ManagerProc, *samples: manager_pb.MetricData) -> int:
    reply = manager_rpc(
        certs,
        mgr.grpc_port,
        "node-a",
        "report_metrics",
        manager_pb.ReportMetricsRequest(node_id="node-a", metrics=list(samples)),
    )
    assert reply.success
    return int(reply.accepted)


def _refused(certs: Path, mgr: ManagerProc, *samples: manager_pb.MetricData) -> str:
    status, message = manager_rpc_error(
        certs,
        mgr.grpc_port,
        "node-a",
        "report_metrics",
        manager_pb.ReportMetricsRequest(node_id="node-a", metrics=list(samples)),
    )
    assert status == Status.INVALID_ARGUMENT, message
    return message


def _stored(certs: Path, mgr: ManagerProc) -> list[tuple[str, int, dict[str, float]]]:
    reply = manager_rpc(
        certs,
        mgr.grpc_port,
        "admin",
        "query_node_metrics",
        admin_pb.QueryNodeMetricsRequest(node_id="node-a", since_seconds=86400),
    )
    return [(m.type, m.timestamp, dict(m.values)) for m in reply.metrics]


def test_bad_input_is_refused_after_the_caches_are_primed(
    manager: ManagerProc, certs: Path
) -> None:
    now = int(time.time())

    def sample(ts: int, values: dict[str, float], kind: str = "cpu") -> manager_pb.MetricData:
        return manager_pb.MetricData(type=kind, timestamp=ts, values=values)

    good = sample(now - 100, {"usage": 1.0, "steal": 2.0})
    assert _report(certs, manager, good) == 1
    before = _stored(certs, manager)

    # Every refusal names the sample and the field; each report's first sample is valid
    # and uses only primed names, so the refusal comes from the bad one after it.
    ok = sample(now - 50, {"usage": 3.0})
    cases = [
        ({"usage": float("nan")}, "cpu", "metrics[1].values[usage] is nan, not a finite number"),
        ({"steal": float("inf")}, "cpu", "metrics[1].values[steal] is inf, not a finite number"),
        ({"usage": float("-inf"), "steal": 1.0}, "cpu", "values[usage] is -inf"),
        ({"": 1.0}, "cpu", "metrics[1].values has an empty key"),
        ({"bad\x01key": 1.0}, "cpu", "metrics[1].values key contains control characters"),
        ({"k" * 65: 1.0}, "cpu", "metrics[1].values key is 65 characters long (max 64)"),
        ({"usage": 1.0}, "", "metrics[1].type is required"),
        ({"usage": 1.0}, "bad type", "metrics[1].type 'bad type' has characters outside"),
        ({"usage": 1.0}, "t" * 33, "metrics[1].type is longer than 32 characters"),
    ]
    for values, kind, expected in cases:
        message = _refused(certs, manager, ok, sample(now - 40, values, kind))
        assert expected in message, (values, kind, message)
    # A timestamp out of range, with a primed type and keys.
    message = _refused(certs, manager, ok, sample(now + 2 * 86400, {"usage": 1.0}))
    assert "metrics[1].timestamp" in message and "plausible" in message
    # Finite values whose sum overflows are still accepted (the fast check only routes
    # them to the full one).
    assert _report(certs, manager, sample(now - 30, {"usage": 1.5e308, "steal": 1.5e308})) == 1
    # No refused report stored anything (its valid first sample included).
    after = _stored(certs, manager)
    assert after == [*before, ("cpu", now - 30, {"usage": 1.5e308, "steal": 1.5e308})]


def test_many_distinct_keys_stay_validated(manager: ManagerProc, certs: Path) -> None:
    """More names than the cache holds: still accepted when valid, refused when not."""
    now = int(time.time())
    for block in range(80):
        values = {f"k{block}_{i}": float(i) for i in range(60)}
        kind, ts = f"t{block}", now - 1000 - block
        sample = manager_pb.MetricData(type=kind, timestamp=ts, values=values)
        assert _report(certs, manager, sample) == 1
    message = _refused(
        certs,
        manager,
        manager_pb.MetricData(type="t0", timestamp=now - 2000, values={"k0_0": float("nan")}),
    )
    assert "metrics[0].values[k0_0] is nan" in message
