"""gRPC server reflection for betterproto services, when descriptors can be built.

grpclib's reflection service answers from protobuf *descriptors*, which betterproto does
not generate. When ``grpcio-tools`` is installed (the ``dev`` extra) the Manager
compiles ``schema/proto`` into a ``FileDescriptorSet`` at start-up, loads it into a
private descriptor pool and registers reflection (v1 and v1alpha) on the gRPC port, so
``grpcurl list`` / ``grpcurl describe`` work. Without grpcio-tools (or protobuf) it logs
why and serves without reflection; everything else is unaffected.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _descriptor_pool() -> Any | None:
    try:
        import importlib.resources

        from google.protobuf import descriptor_pb2, descriptor_pool
        from grpc_tools import protoc
    except ImportError as exc:
        log.info("gRPC reflection disabled: %s (install grpcio-tools)", exc)
        return None
    import schema

    root = Path(schema.__file__).parent / "proto"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fleet.pb"
        rc = protoc.main(
            [
                "protoc",
                f"-I{root}",
                f"-I{include}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                *files,
            ]
        )
        if rc != 0:
            log.warning("gRPC reflection disabled: protoc failed on %s", root)
            return None
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in descriptor_set.file:
        pool.Add(file_proto)
    return pool


def with_reflection(services: list[Any]) -> list[Any]:
    """``services`` plus the reflection services when descriptors are available."""
    try:
        pool = _descriptor_pool()
        if pool is None:
            return services
        from grpclib.reflection.service import ServerReflection

        return list(ServerReflection.extend(services, pool=pool))
    except Exception as exc:  # reflection is a convenience: never block start-up
        log.warning("gRPC reflection disabled: %s", exc)
        return services
