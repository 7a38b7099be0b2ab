"""Central agent specs: the document an operator signs, and how anyone checks it.

A *spec* is a named set of agent definitions (the same keys as a ``[[agents]]`` table of
``daemon.toml``) with a *target*: node ids and/or labels. fleetctl turns a spec file into
a document, signs it with the operator's admin key, and sends it to the Manager, which
stores and relays it to the Daemons it targets. Each Daemon verifies the signature
against the fleet CA before running anything, so the Manager can neither forge, alter nor
roll back a spec: it only relays (docs/specs.md).

The signed document is canonical JSON (UTF-8, sorted keys, no spaces)::

    {"kind": "fleet.spec/v1", "name": "web", "revision": 3,
     "target": {"labels": {"role": "web"}, "nodes": []},
     "agents": [{"id": "nginx", "command": ["/usr/sbin/nginx"], ...}],
     "signed_at": 1764484000, "expires_at": 0, "rollback_of": 0}

``revision`` must grow by one with every change (a Daemon refuses a revision lower than
one it has seen); ``expires_at``/``rollback_of`` are set on the rollback revision that
fleetctl pre-signs for ``--auto-rollback`` (the previous content as ``revision + 1``),
which a Daemon accepts only until it expires.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .agentspec import ID_PATTERN, AgentSpec, ConfigError, parse_agent
from .pki import cert_identity, issued_by
from .tls import Identity

KIND = "fleet.spec/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_AGENTS = 100
MAX_TARGET_NODES = 10_000
# File keys (besides the agents and target) that fleetctl reads and does not sign.
FILE_KEYS = frozenset({"name", "target", "agents", "rollout"})


class SpecError(ValueError):
    """A spec document or signature that is not acceptable; the message says why."""


class SignedSpecLike(Protocol):
    """``daemon_pb.SignedSpec`` (betterproto) or its upb twin."""

    payload: bytes
    signature: bytes
    signer_cert: bytes


@dataclass(frozen=True)
class Target:
    """Which nodes a spec is for: any node named in ``nodes``, or whose labels include
    every pair of ``labels`` (when ``labels`` is not empty)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()

    def matches(self, node_id: str, labels: Mapping[str, str]) -> bool:
        if node_id in self.nodes:
            return True
        return bool(self.labels) and all(labels.get(k) == v for k, v in self.labels.items())

    def to_json(self) -> dict[str, Any]:
        return {"labels": dict(sorted(self.labels.items())), "nodes": sorted(self.nodes)}

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.labels.items())]
        parts += [f"node {n}" for n in sorted(self.nodes)]
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class SpecDoc:
    """A parsed, validated spec document."""

    name: str
    revision: int
    target: Target
    agents: tuple[AgentSpec, ...]
    # The agent tables exactly as signed (what a diff or a rollback re-signs).
    raw_agents: tuple[Mapping[str, Any], ...]
    signed_at: int = 0
    expires_at: int = 0
    rollback_of: int = 0

    @property
    def agent_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.agents)

    def content(self) -> dict[str, Any]:
        """What the spec asks for, without its name, revision and signing metadata."""
        return {"target": self.target.to_json(), "agents": [dict(a) for a in self.raw_agents]}

    def same_content(self, other: SpecDoc) -> bool:
        return canonical(self.content()) == canonical(other.content())

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires_at) and (now if now is not None else time.time()) > self.expires_at


def canonical(obj: Any) -> bytes:
    """The canonical JSON encoding everybody signs and compares."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ---- documents ----


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        raise SpecError(f"spec name {name!r} must be 1-128 of [A-Za-z0-9._-]")
    return name


def _target(raw: Any) -> Target:
    if not isinstance(raw, Mapping):
        raise SpecError("key 'target' must be a table with 'labels' and/or 'nodes'")
    unknown = set(raw) - {"labels", "nodes"}
    if unknown:
        raise SpecError(f"target: unknown key {sorted(unknown)[0]!r} (expected labels, nodes)")
    labels = raw.get("labels", {})
    nodes = raw.get("nodes", [])
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items()
    ):
        raise SpecError("target: key 'labels' must be a table of strings")
    if not isinstance(nodes, list) or not all(
        isinstance(n, str) and ID_PATTERN.fullmatch(n) for n in nodes
    ):
        raise SpecError("target: key 'nodes' must be a list of node ids")
    if len(nodes) > MAX_TARGET_NODES:
        raise SpecError(f"target: at most {MAX_TARGET_NODES} nodes")
    if not labels and not nodes:
        raise SpecError("target: name labels and/or nodes (an empty target matches no node)")
    return Target(labels=dict(labels), nodes=tuple(sorted(set(nodes))))


def _agents(raw: Any) -> tuple[tuple[AgentSpec, ...], tuple[Mapping[str, Any], ...]]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("key 'agents' must be a non-empty list of [[agents]] tables")
    if len(raw) > MAX_AGENTS:
        raise SpecError(f"a spec holds at most {MAX_AGENTS} agents")
    specs = []
    for i, table in enumerate(raw):
        try:
            spec = parse_agent(i, table)
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if spec.cwd and not spec.cwd.startswith("/"):
            raise SpecError(f"agent {spec.id!r}: key 'cwd' must be an absolute path in a spec")
        specs.append(spec)
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise SpecError(f"agent {spec.id!r}: key 'id' is declared twice")
        seen.add(spec.id)
    return tuple(specs), tuple(dict(t) for t in raw)


def _json_safe(value: Any, where: str) -> Any:
    """TOML values as JSON values (TOML dates and times are refused: JSON has none)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v, where) for v in value]
    if isinstance(value, dt.date | dt.time):
        raise SpecError(f"key {where!r}: dates and times are not supported in a spec")
    if isinstance(value, float) and value != value:
        raise SpecError(f"key {where!r}: NaN is not supported")
    return value


def document_from_file(data: Mapping[str, Any], *, default_name: str) -> dict[str, Any]:
    """The unsigned document (without revision and signing times) of a spec file's data.

    The file holds ``name`` (default: the file's stem), ``[target]``, one or more
    ``[[agents]]`` and optionally ``[rollout]`` (apply defaults, not signed).
    """
    unknown = set(data) - FILE_KEYS
    if unknown:
        raise SpecError(
            f"unknown key {sorted(unknown)[0]!r} (a spec file holds name, [target], "
            "[[agents]] and [rollout])"
        )
    name = _check_name(data.get("name", default_name))
    target = _target(data.get("target"))
    agents_raw = _json_safe(data.get("agents"), "agents")
    _agents(agents_raw)
    return {"kind": KIND, "name": name, "target": target.to_json(), "agents": agents_raw}


def parse_payload(payload: bytes) -> SpecDoc:
    """Validate a signed payload's document (not its signature: see :func:`verify`)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SpecError(f"spec document is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec document is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError("spec document must be a JSON object")
    if data.get("kind") != KIND:
        raise SpecError(f"spec document kind {data.get('kind')!r} is not {KIND!r}")
    name = _check_name(data.get("name"))
    ints = {}
    for key in ("revision", "signed_at", "expires_at", "rollback_of"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(f"spec {name!r}: key {key!r} must be a non-negative integer")
        ints[key] = value
    if ints["revision"] < 1:
        raise SpecError(f"spec {name!r}: revision must be >= 1")
    agents, raw = _agents(data.get("agents"))
    return SpecDoc(
        name=name,
        revision=ints["revision"],
        target=_target(data.get("target")),
        agents=agents,
        raw_agents=raw,
        signed_at=ints["signed_at"],
        expires_at=ints["expires_at"],
        rollback_of=ints["rollback_of"],
    )


# ---- signatures ----

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
_PRIVATE_KEY_TYPES = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)


def load_signing_key(path: Path) -> PrivateKey:
    """The operator's private key (the admin key fleetctl already uses for mTLS)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SpecError(
            f"signing key {path} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise SpecError(f"signing key {path}: unsupported key type {type(key).__name__}")
    return key


def sign(document: Mapping[str, Any], key: PrivateKey) -> tuple[bytes, bytes]:
    """``(payload, signature)`` for a complete document (revision and times included)."""
    payload = canonical(dict(document))
    parse_payload(payload)  # never sign what a Daemon would refuse
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(payload)
    else:
        signature = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    return payload, signature


def load_ca_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in the fleet CA file (a root, or a bundle)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot load CA certificates from {path}: {exc}") from None


def verify(
    signed: SignedSpecLike, *, ca_certs: Sequence[x509.Certificate], now: float | None = None
) -> tuple[SpecDoc, Identity]:
    """Check that ``signed`` was signed by a valid admin certificate of the fleet CA and
    holds a valid document; return the document and the signer. Raises :class:`SpecError`."""
    try:
        cert = x509.load_pem_x509_certificate(bytes(signed.signer_cert))
    except ValueError as exc:
        raise SpecError(f"signer certificate is not a PEM certificate: {exc}") from None
    if not any(issued_by(cert, ca) for ca in ca_certs):
        raise SpecError("signer certificate was not issued by the fleet CA")
    moment = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise SpecError(
            f"signer certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    identity = cert_identity(cert)
    if identity is None or identity.role != "admin":
        raise SpecError(f"signer {identity or 'without a Fleet identity'} is not an admin")
    public = cert.public_key()
    payload, signature = bytes(signed.payload), bytes(signed.signature)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, payload)
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SpecError(f"signer key type {type(public).__name__} is not supported")
    except InvalidSignature:
        raise SpecError(f"signature by {identity} does not match the spec document") from None
    return parse_payload(payload), identity
