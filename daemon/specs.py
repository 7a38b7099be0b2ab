"""Central specs on this Daemon: which signed revisions it accepts, and what it remembers.

The Manager sends the node's complete set of operator-signed specs (``ApplySpecs``). For
each one :class:`SpecBook` decides, before anything runs (docs/specs.md):

1. the signature chains to the fleet CA through an admin certificate
   (:func:`common.specdoc.verify`), and that certificate is not revoked (the Daemon's
   copy of the fleet's revocations); without a CA (insecure mode) every spec is refused;
2. the revision is not lower than the highest one seen for that name, and a revision
   seen before has the same bytes (the Manager cannot replay or swap a revision);
3. it has not expired; its target names this node (id or labels);
4. the host policy (``[specs]`` of daemon.toml) allows every agent's executable and user;
5. no agent id clashes with ``daemon.toml`` (local wins) or with another spec (the spec
   already running the id keeps it, else the lower name).

A refused revision runs nothing; the revision accepted before (if any) keeps running as
long as it still passes 3-5 (labels and policy can change on reload). Specs absent from
the set are removed. Accepted envelopes and the highest revision seen per name are kept
in ``<state_dir>/specs.json`` (0600, replaced atomically) and checked again at start.

:class:`SpecBook` only decides and remembers; :class:`daemon.desired.DesiredState` runs
the agents (through :meth:`daemon.agents.Agents.reconcile`) and then commits.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.agentspec import ID_PATTERN
from common.revocation import PeerCertificate, RevocationList
from common.specdoc import SpecDoc, SpecError, verify
from schema import daemon_pb, manager_pb

from .config import SpecPolicy
from .reconcile import Desired, Origin
from .specpolicy import policy_refusal
from .textsafe import clean

log = logging.getLogger(__name__)

APPLIED = "APPLIED"
REFUSED = "REFUSED"
FAILED = "FAILED"
NO_CA = "no CA to verify signatures (insecure mode)"
DISABLED = "central specs are disabled on this node ([specs] enabled = false)"


@dataclass(frozen=True)
class Envelope:
    """The bytes of one ``SignedSpec``, as received and as stored."""

    payload: bytes
    signature: bytes
    signer_cert: bytes

    @classmethod
    def from_pb(cls, signed: daemon_pb.SignedSpec) -> Envelope:
        return cls(bytes(signed.payload), bytes(signed.signature), bytes(signed.signer_cert))

    def to_pb(self) -> daemon_pb.SignedSpec:
        return daemon_pb.SignedSpec(
            payload=self.payload, signature=self.signature, signer_cert=self.signer_cert
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def claimed(self) -> tuple[str, int]:
        """The name and revision the payload says it has, before anyone checked it: only
        for grouping and reporting ("?" / 0 when unreadable)."""
        try:
            data = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "?", 0
        if not isinstance(data, dict):
            return "?", 0
        name, revision = data.get("name"), data.get("revision")
        return (
            name if isinstance(name, str) and ID_PATTERN.fullmatch(name) else "?",
            revision if isinstance(revision, int) and not isinstance(revision, bool) else 0,
        )


@dataclass(frozen=True)
class Held:
    """An accepted (verified) revision: what runs for that spec."""

    envelope: Envelope
    doc: SpecDoc
    accepted_at: float
    signer: str = ""


@dataclass(frozen=True)
class Seen:
    """The highest revision seen (with a valid signature) for a name, and its digest."""

    revision: int
    digest: str


@dataclass(frozen=True)
class Decision:
    """The outcome for one spec name of an evaluation."""

    name: str
    revision: int  # the revision offered (0 when unreadable)
    status: str  # APPLIED or REFUSED (FAILED is decided after the agents started)
    reason: str
    running: Held | None  # what runs for this name afterwards


@dataclass(frozen=True)
class SpecPlan:
    """What an evaluation decided; :meth:`SpecBook.commit` makes it current."""

    decisions: Mapping[str, Decision]
    removed: tuple[str, ...]
    seen: Mapping[str, Seen]
    offered: tuple[Envelope, ...]

    def desired(self) -> list[Desired]:
        """The agents of every spec that runs, by spec name, in each spec's order."""
        out = []
        for name in sorted(self.decisions):
            held = self.decisions[name].running
            if held is not None:
                origin = Origin(held.doc.name, held.doc.revision)
                out += [Desired(agent, origin) for agent in held.doc.agents]
        return out


@dataclass(frozen=True)
class HostContext:
    """What the checks need to know about this host right now."""

    node_id: str
    labels: Mapping[str, str]
    policy: SpecPolicy
    local_ids: Collection[str]
    # Agent id → the spec that runs it now (who keeps an id two specs want).
    running_owner: Mapping[str, str] = field(default_factory=dict)


class SpecBook:
    """Accepted central specs, the highest revision seen per name, and their states."""

    def __init__(
        self,
        *,
        path: Path,
        ca_certs: Sequence[x509.Certificate],
        base_env: Mapping[str, str],
        euid: int,
        cwd: str,
        revocations: RevocationList | None = None,
    ) -> None:
        self._store = SpecStore(path=path)
        self._ca = list(ca_certs)
        self._revocations = revocations
        self._path_env = base_env.get("PATH", os.defpath)
        self._euid = euid
        self._cwd = cwd
        self._held: dict[str, Held] = {}
        self._seen: dict[str, Seen] = {}
        self._offered: tuple[Envelope, ...] = ()
        self._states: dict[str, manager_pb.SpecState] = {}

    # ---- start ----

    def load(self) -> None:
        """Read specs.json. Stored revisions are checked again by the first evaluation
        (signature as of when they were accepted: an admin certificate expiring later
        does not stop agents that were accepted while it was valid)."""
        stored, self._seen = self._store.load()
        self._offered = tuple(envelope for envelope, _ in stored.values())
        for name, (envelope, accepted_at) in stored.items():
            if not self._ca:
                continue
            try:
                doc, signer = verify(envelope.to_pb(), ca_certs=self._ca, now=accepted_at)
            except (SpecError, RecursionError) as exc:
                log.error("stored spec %s does not verify any more: %s", name, exc)
                continue
            self._held[name] = Held(envelope, doc, accepted_at, str(signer))

    # ---- deciding ----

    def evaluate(self, offered: Sequence[Envelope] | None, host: HostContext) -> SpecPlan:
        """Decide, for ``offered`` (None: the set offered last, or the stored one at start)
        against this host as it is now; nothing changes until :meth:`commit`."""
        envelopes = tuple(offered) if offered is not None else self._offered
        seen = dict(self._seen)
        now = time.time()
        by_name: dict[str, list[Envelope]] = {}
        for envelope in envelopes:
            by_name.setdefault(envelope.claimed()[0], []).append(envelope)
        options: dict[str, list[Held]] = {}
        reasons: dict[str, str] = {}
        revisions: dict[str, int] = {}
        for name, group in sorted(by_name.items()):
            held = self._held.get(name)
            candidate: Held | None = None
            if len(group) > 1:
                reasons[name] = f"the set holds {len(group)} documents named {name!r}"
                revisions[name] = max(e.claimed()[1] for e in group)
            else:
                candidate, reasons[name], revisions[name] = self._check_offered(
                    group[0], held, seen, host, now
                )
            options[name] = [candidate] if candidate is not None else []
            # The revision running now, should the offered one be refused (or lose an id
            # to another spec), keeps running while this host still takes it — unless it
            # is the very revision offered (then it was just checked).
            if held is not None and group != [held.envelope]:
                why = self._host_refusal(held.doc, host)
                if why is None:
                    options[name].append(held)
                else:
                    reasons[name] += f"; revision {held.doc.revision} stopped: {why}"
        chosen = _resolve_clashes(options, host.running_owner, reasons)
        decisions = {}
        for name, running in chosen.items():
            revision = revisions.get(name, 0)
            accepted = (
                running is not None
                and running.doc.revision == revision
                and (running.envelope in by_name[name])
            )
            decisions[name] = Decision(
                name=name,
                revision=revision,
                status=APPLIED if accepted else REFUSED,
                reason="" if accepted else reasons[name],
                running=running,
            )
        return SpecPlan(
            decisions=decisions,
            removed=tuple(sorted(set(self._held) - set(by_name))),
            seen=seen,
            offered=envelopes,
        )

    def _check_offered(
        self,
        envelope: Envelope,
        held: Held | None,
        seen: dict[str, Seen],
        host: HostContext,
        now: float,
    ) -> tuple[Held | None, str, int]:
        """(the revision if acceptable, else None; why not; its revision number)."""
        claimed = envelope.claimed()[1]
        if not host.policy.enabled:
            return None, DISABLED, claimed
        if not self._ca:
            return None, NO_CA, claimed
        again = held is not None and envelope == held.envelope
        try:
            doc, signer = verify(
                envelope.to_pb(),
                ca_certs=self._ca,
                now=held.accepted_at if held and again else None,
            )
        except SpecError as exc:
            return None, str(exc), claimed
        except RecursionError:  # signed, but nested too deeply for the JSON parser
            return None, "spec document is nested too deeply to parse", claimed
        revoked = self._signer_revoked(envelope)
        if revoked is not None:
            return None, revoked, claimed
        name, revision = doc.name, doc.revision
        last = seen.get(name)
        if last is not None and revision < last.revision:
            return (
                None,
                f"revision {revision} is lower than revision {last.revision} already seen: "
                "refusing a replay of an older revision",
                revision,
            )
        if last is not None and revision == last.revision and envelope.digest != last.digest:
            return (
                None,
                f"revision {revision} differs from the revision {revision} seen before "
                "(same number, other content)",
                revision,
            )
        seen[name] = Seen(revision, envelope.digest)
        if not again and doc.expired(now):
            when = dt.datetime.fromtimestamp(doc.expires_at, dt.UTC)
            return None, f"revision {revision} expired at {when:%Y-%m-%d %H:%M:%S} UTC", revision
        why = self._host_refusal(doc, host)
        if why is not None:
            return None, why, revision
        accepted_at = held.accepted_at if held is not None and again else now
        return Held(envelope, doc, accepted_at, str(signer)), "", revision

    def _signer_revoked(self, envelope: Envelope) -> str | None:
        """Why the (verified) signer certificate may not sign any more, or None."""
        if self._revocations is None or not len(self._revocations):
            return None
        cert = x509.load_pem_x509_certificate(envelope.signer_cert)
        peer = PeerCertificate.from_der(cert.public_bytes(serialization.Encoding.DER))
        revocation = self._revocations.check(peer)
        if revocation is None:
            return None
        why = f": {revocation.reason}" if revocation.reason else ""
        return f"signer certificate {peer.serial} is revoked{why}"

    def _host_refusal(self, doc: SpecDoc, host: HostContext) -> str | None:
        """Why this host does not run ``doc`` (target, policy, clash with daemon.toml)."""
        if not host.policy.enabled:
            return DISABLED
        if not doc.target.matches(host.node_id, host.labels):
            labels = ", ".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "none"
            return (
                f"its target ({doc.target.describe()}) does not include node "
                f"{host.node_id!r} (labels: {labels})"
            )
        for agent in doc.agents:
            if agent.id in host.local_ids:
                return f"agent id {agent.id!r} is declared in daemon.toml on this node"
            why = policy_refusal(
                agent,
                host.policy,
                euid=self._euid,
                path_env=agent.env.get("PATH", self._path_env),
                cwd=agent.cwd or self._cwd,
            )
            if why is not None:
                return why
        return None

    # ---- committing ----

    def commit(self, plan: SpecPlan, errors: Mapping[str, str]) -> list[manager_pb.SpecState]:
        """Make ``plan`` current once its agents were applied (``errors``: agent id → why
        it did not start); persist; return one SpecState per spec offered or removed."""
        self._seen = dict(plan.seen)
        self._offered = plan.offered
        self._held = {n: d.running for n, d in plan.decisions.items() if d.running is not None}
        states: dict[str, manager_pb.SpecState] = {}
        for name, d in sorted(plan.decisions.items()):
            status, reason = d.status, d.reason
            if status == APPLIED and d.running is not None:
                failed = [(a, errors[a]) for a in d.running.doc.agent_ids if a in errors]
                if failed:
                    status = FAILED
                    reason = "; ".join(f"agent {a!r} did not start: {e}" for a, e in failed)
            states[name] = manager_pb.SpecState(
                name=name,
                revision=d.revision,
                status=status,
                # Start errors quote agents' stderr, and several add up: reported
                # clean and within what the Manager stores (textsafe).
                reason=clean(reason),
                running_revision=d.running.doc.revision if d.running else 0,
            )
            self._log(states[name], d.running.signer if d.running else "")
        for name in plan.removed:
            log.info("spec %s: removed (no longer in the set the Manager sends)", name)
        self._states = states
        try:
            self._store.save(self._held, self._seen)
        except OSError as exc:
            log.error("cannot write %s: %s", self._store.path, exc)
        gone = [
            manager_pb.SpecState(name=n, status=APPLIED, reason="removed: not in the offered set")
            for n in plan.removed
        ]
        return list(states.values()) + gone

    def _log(self, state: manager_pb.SpecState, signer: str) -> None:
        before = self._states.get(state.name)
        same = before is not None and (before.revision, before.status, before.reason) == (
            state.revision,
            state.status,
            state.reason,
        )
        level = logging.DEBUG if same else logging.INFO
        if state.status == APPLIED:
            log.log(level, "spec %s@%d (signed by %s) accepted", state.name, state.revision, signer)
        else:
            level = logging.DEBUG if same else logging.WARNING
            log.log(
                level,
                "spec %s@%d %s: %s%s",
                state.name,
                state.revision,
                state.status.lower(),
                state.reason,
                f" (revision {state.running_revision} keeps running)"
                if state.running_revision and state.running_revision != state.revision
                else "",
            )

    def states(self) -> list[manager_pb.SpecState]:
        """One SpecState per spec held or last offered (for full SyncAgentStates)."""
        return list(self._states.values())


def _resolve_clashes(
    options: Mapping[str, list[Held]], running_owner: Mapping[str, str], reasons: dict[str, str]
) -> dict[str, Held | None]:
    """Pick one option per spec so that no agent id is in two specs: the spec already
    running an id keeps it, else the lower name; a loser falls back to its next option
    (the revision it ran before), else runs nothing."""
    choice = dict.fromkeys(options, 0)

    def current(name: str) -> Held | None:
        opts = options[name]
        return opts[choice[name]] if choice[name] < len(opts) else None

    while True:
        wants: dict[str, list[str]] = {}
        for name in sorted(options):
            held = current(name)
            for agent_id in held.doc.agent_ids if held else ():
                wants.setdefault(agent_id, []).append(name)
        losers: dict[str, tuple[str, str]] = {}
        for agent_id, names in wants.items():
            if len(names) < 2:
                continue
            owner = running_owner.get(agent_id, "")
            keeper = owner if owner in names else min(names)
            for name in names:
                if name != keeper:
                    losers.setdefault(name, (agent_id, keeper))
        if not losers:
            return {name: current(name) for name in options}
        for name, (agent_id, keeper) in losers.items():
            why = f"agent id {agent_id!r} is also in spec {keeper!r}, which keeps it"
            reasons[name] = f"{reasons[name]}; {why}" if reasons[name] else why
            choice[name] += 1


# ---- persistence ----


class SpecStore:
    """``<state_dir>/specs.json``: accepted envelopes and the highest revision seen."""

    def __init__(self, *, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[dict[str, tuple[Envelope, float]], dict[str, Seen]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable spec file %s: %s", self.path, exc)
            return {}, {}
        held: dict[str, tuple[Envelope, float]] = {}
        seen: dict[str, Seen] = {}
        try:
            for name, data in raw.get("specs", {}).items():
                envelope = Envelope(
                    payload=_unb64(data["payload"]),
                    signature=_unb64(data["signature"]),
                    signer_cert=_unb64(data["signer_cert"]),
                )
                held[name] = (envelope, float(data["accepted_at"]))
            for name, data in raw.get("seen", {}).items():
                seen[name] = Seen(int(data["revision"]), str(data["digest"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("ignoring malformed spec file %s: %s", self.path, exc)
            return {}, {}
        return held, seen

    def save(self, held: Mapping[str, Held], seen: Mapping[str, Seen]) -> None:
        data: dict[str, Any] = {
            "version": 1,
            "specs": {
                name: {
                    "revision": h.doc.revision,
                    "accepted_at": h.accepted_at,
                    "payload": _b64(h.envelope.payload),
                    "signature": _b64(h.envelope.signature),
                    "signer_cert": _b64(h.envelope.signer_cert),
                }
                for name, h in sorted(held.items())
            },
            "seen": {
                name: {"revision": s.revision, "digest": s.digest}
                for name, s in sorted(seen.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)
