"""The desired-state half of AdminService: ApplySpec, ListSpecs, GetSpec, DeleteSpec,
GetRollout and SetRolloutState (AdminService delegates them here).

ApplySpec checks, in order (each with the status fleetctl maps to an exit code):

* the Manager runs with TLS, else ``FAILED_PRECONDITION`` "specs need TLS": without a
  fleet CA there is nothing to verify a signature with;
* ``spec`` is given, its document is valid (``INVALID_ARGUMENT`` with the reason) and
  signed by an admin certificate of the fleet CA that is valid now
  (``PERMISSION_DENIED`` with the reason); an expired document is ``INVALID_ARGUMENT``;
* the policy is valid (``INVALID_ARGUMENT`` naming the field);
* the document's revision is the spec's ``next_revision`` (``FAILED_PRECONDITION``
  "spec web is at revision 4 (next 5); you signed 3: re-run");
* the optional rollback envelope: verified the same way, same name, revision + 1,
  ``rollback_of`` = revision, the current revision's content, not expired
  (``INVALID_ARGUMENT`` / ``PERMISSION_DENIED``, prefixed "rollback: ").

Content equal to the current revision changes nothing (``changed = false``). A dry run
returns the plan and touches nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from cryptography import x509

from common import validate
from common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from common.rpc import current_call
from common.specdoc import SpecDoc, SpecError, parse_payload, verify
from common.tls import Identity
from schema import admin_pb, daemon_pb

from ..specs.catalog import RevisionCatalog
from ..specs.controller import SpecController
from ..specs.desired import desired_revisions
from ..specs.plan import agent_changes, node_plan
from ..specs.policy import Policy
from ..specs.rollouts import RolloutDriver, load_progress
from ..store.models import APPLY, PAUSED, RUNNING, Rollout, Spec
from ..store.specs import NewRevision, SpecStateRow, SpecStore, stale_message
from . import spec_views

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 20
MAX_HISTORY = 1000
ACTIONS = ("pause", "resume")


class SpecAdmin:
    """Spec and rollout RPCs (see module doc)."""

    def __init__(
        self,
        *,
        store: SpecStore,
        catalog: RevisionCatalog,
        controller: SpecController,
        rollouts: RolloutDriver,
        ca_certs: Sequence[x509.Certificate] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._controller = controller
        self._rollouts = rollouts
        self._ca = ca_certs
        self._clock = clock

    def node_removed(self, node_id: str) -> None:
        """RemoveNode forgot a node: so does the controller."""
        self._controller.forget(node_id)

    # ---- ApplySpec ----

    async def apply_spec(self, request: admin_pb.ApplySpecRequest) -> admin_pb.ApplySpecResponse:
        if self._ca is None:
            raise FailedPrecondition(
                "specs need TLS: this Manager runs without it (--insecure) and has no fleet "
                "CA to verify signatures with"
            )
        if request.spec is None or not request.spec.payload:
            raise InvalidArgument("spec is required: a signed spec document (fleetctl apply)")
        now = self._clock()
        doc, signer = self._verify("spec", request.spec, now)
        policy = Policy.from_request(request.policy)
        spec = await self._store.get_spec(doc.name)
        if doc.revision != (spec.next_revision if spec is not None else 1):
            raise FailedPrecondition(stale_message(spec, doc.name, doc.revision))
        current = None
        if spec is not None and not spec.deleted and spec.revision:
            current = await self._catalog.get(spec.name, spec.revision)
        current_doc = current.doc if current is not None else None
        changed = current_doc is None or not doc.same_content(current_doc)
        rollback = None
        if changed and request.rollback is not None and request.rollback.payload:
            rollback = self._check_rollback(request.rollback, doc, current_doc, now)
        plan = await self._plan(doc.name, doc, doc.revision) if changed else []
        if request.dry_run or not changed:
            return admin_pb.ApplySpecResponse(
                spec=await self._spec_message(spec, doc.name), changed=changed, plan=plan
            )
        caller = str(current_call().identity)
        stored, rollout, interrupted = await self._store.apply_revision(
            new=NewRevision(
                name=doc.name,
                revision=doc.revision,
                kind=APPLY,
                payload=bytes(request.spec.payload),
                signature=bytes(request.spec.signature),
                signer_cert=bytes(request.spec.signer_cert),
                signed_by=str(signer),
                applied_by=caller,
            ),
            policy=policy.to_json(),
            from_revision=current.revision if current is not None else 0,
            rollback=rollback,
            now=now,
        )
        for old in interrupted:
            log.info(
                "rollout of %s revision %d interrupted: %s", old.spec, old.revision, old.reason
            )
        log.info(
            "spec %s revision %d applied by %s (signed by %s): %d node(s) change",
            doc.name,
            doc.revision,
            caller,
            signer,
            len(plan),
        )
        self._controller.reconcile_all()
        self._rollouts.poke()
        return admin_pb.ApplySpecResponse(
            spec=await self._spec_message(stored, doc.name),
            changed=True,
            plan=plan,
            rollout=await self._rollout_message(rollout),
        )

    def _verify(
        self, what: str, signed: daemon_pb.SignedSpec, now: float
    ) -> tuple[SpecDoc, Identity]:
        assert self._ca is not None
        try:
            parse_payload(bytes(signed.payload))
        except SpecError as exc:
            raise InvalidArgument(f"{what}: {exc}") from None
        try:
            doc, signer = verify(signed, ca_certs=self._ca, now=now)
        except SpecError as exc:
            raise PermissionDenied(f"{what}: {exc}") from None
        if doc.expired(now):
            raise InvalidArgument(f"{what}: the document expired (expires_at {doc.expires_at})")
        return doc, signer

    def _check_rollback(
        self, signed: daemon_pb.SignedSpec, doc: SpecDoc, current: SpecDoc | None, now: float
    ) -> NewRevision:
        rollback, signer = self._verify("rollback", signed, now)
        wrong = ""
        if rollback.name != doc.name:
            wrong = f"it is for spec {rollback.name}, not {doc.name}"
        elif rollback.revision != doc.revision + 1:
            wrong = f"its revision is {rollback.revision}, not {doc.revision + 1}"
        elif rollback.rollback_of != doc.revision:
            wrong = f"its rollback_of is {rollback.rollback_of}, not {doc.revision}"
        elif current is None:
            wrong = f"spec {doc.name} has no current revision to roll back to"
        elif not rollback.same_content(current):
            wrong = "its content is not the current revision's"
        if wrong:
            raise InvalidArgument(f"rollback: {wrong}")
        return NewRevision(
            name=doc.name,
            revision=rollback.revision,
            kind="rollback",
            payload=bytes(signed.payload),
            signature=bytes(signed.signature),
            signer_cert=bytes(signed.signer_cert),
            signed_by=str(signer),
            applied_by="",
        )

    async def _plan(
        self, name: str, new: SpecDoc | None, new_revision: int
    ) -> list[admin_pb.NodePlan]:
        """Per node, what moving from what it runs now to ``new`` (None: delete) changes."""
        states = {s.node_id: s for s in await self._store.spec_states(name=name)}
        plans = []
        for node in await self._store.node_facts():
            state = states.get(node.node_id)
            running = state.running_revision if state is not None else 0
            old = await self._catalog.get(name, running) if running else None
            wanted = (
                new if new is not None and new.target.matches(node.node_id, node.labels) else None
            )
            changes = agent_changes(
                name, old.doc if old is not None else None, running, wanted, new_revision
            )
            if changes:
                plans.append(node_plan(node.node_id, changes))
        return plans

    # ---- views ----

    async def list_specs(self, request: admin_pb.ListSpecsRequest) -> admin_pb.ListSpecsResponse:
        specs = await self._store.list_specs(include_deleted=request.include_deleted)
        return admin_pb.ListSpecsResponse(specs=await self._spec_messages(specs))

    async def get_spec(self, request: admin_pb.GetSpecRequest) -> admin_pb.GetSpecResponse:
        name = validate.check_id("name", request.name)
        limit = request.history_limit or DEFAULT_HISTORY
        if not 0 < limit <= MAX_HISTORY:
            raise InvalidArgument(f"history_limit {limit} is outside 0..{MAX_HISTORY}")
        spec = await self._existing(name)
        [message] = await self._spec_messages([spec])
        current = None
        if not spec.deleted:
            row = await self._store.get_revision(name, spec.revision)
            current = spec_views.revision_message(row) if row is not None else None
        history = [spec_views.revision_message(r) for r in await self._store.history(name, limit)]
        rollout = await self._store.latest_rollout(name)
        response = admin_pb.GetSpecResponse(
            spec=message, history=history, nodes=await self._node_statuses(spec, rollout)
        )
        if current is not None:
            response.current = current
        if rollout is not None:
            response.rollout = await self._rollout_message(rollout)
        return response

    async def _existing(self, name: str) -> Spec:
        spec = await self._store.get_spec(name)
        if spec is None or not spec.revision:
            raise NotFound(f"spec {name} does not exist")
        return spec

    async def _spec_message(self, spec: Spec | None, name: str) -> admin_pb.Spec:
        if spec is None:  # never applied: what the first apply must sign
            return admin_pb.Spec(name=name, next_revision=1)
        [message] = await self._spec_messages([spec])
        return message

    async def _spec_messages(self, specs: list[Spec]) -> list[admin_pb.Spec]:
        live = [s for s in specs if not s.deleted and s.revision]
        nodes = await self._store.node_facts() if live else []
        states: dict[tuple[str, str], SpecStateRow] = {}
        if live:
            for state in await self._store.spec_states():
                states[(state.node_id, state.name)] = state
        live_names = {s.name for s in live}
        out = []
        for spec in specs:
            current = None
            if spec.name in live_names:
                current = await self._catalog.get(spec.name, spec.revision)
            out.append(spec_views.spec_message(spec, current, nodes, states))
        return out

    async def _node_statuses(
        self, spec: Spec, rollout: Rollout | None
    ) -> list[admin_pb.SpecNodeStatus]:
        name = spec.name
        facts = {f.node_id: f for f in await self._store.node_facts()}
        states = {s.node_id: s for s in await self._store.spec_states(name=name)}
        rows = {}
        if rollout is not None and rollout.revision == spec.revision:
            rows = {r.node_id: r for r in await self._store.rollout_nodes([rollout.id])}
        live = [s for s in await self._catalog.live_specs() if s.name == name]
        targets = await self._catalog.targets_of((name, s.revision) for s in states.values())
        wanted: dict[str, int] = {}
        for node in facts.values():
            reported = {name: states[node.node_id]} if node.node_id in states else {}
            revision = desired_revisions(node.node_id, node.labels, live, reported, targets)
            if name in revision:
                wanted[node.node_id] = revision[name]
        out = []
        for node_id in sorted((set(states) | set(rows) | set(wanted)) & set(facts)):
            out.append(
                spec_views.node_status(
                    facts[node_id],
                    target_revision=wanted.get(node_id, 0),
                    current_revision=0 if spec.deleted else spec.revision,
                    state=states.get(node_id),
                    row=rows.get(node_id),
                    rollout_state=rollout.state if rollout is not None else "",
                )
            )
        return out

    async def _rollout_message(self, rollout: Rollout) -> admin_pb.Rollout:
        current = await self._catalog.get(rollout.spec, rollout.revision)
        progress = None
        if current is not None:
            progress, _facts, _states = await load_progress(
                self._store, self._catalog, rollout, current.doc
            )
        return spec_views.rollout_message(rollout, progress)

    # ---- DeleteSpec ----

    async def delete_spec(self, request: admin_pb.DeleteSpecRequest) -> admin_pb.DeleteSpecResponse:
        name = validate.check_id("name", request.name)
        spec = await self._existing(name)
        if spec.deleted:  # deleting twice changes nothing
            return admin_pb.DeleteSpecResponse(spec=await self._spec_message(spec, name))
        plan = await self._plan(name, None, 0)
        if request.dry_run:
            return admin_pb.DeleteSpecResponse(spec=await self._spec_message(spec, name), plan=plan)
        caller = str(current_call().identity)
        stored, interrupted = await self._store.delete_spec(
            name=name, expected_next=spec.next_revision, applied_by=caller, now=self._clock()
        )
        for old in interrupted:
            log.info(
                "rollout of %s revision %d interrupted: %s", old.spec, old.revision, old.reason
            )
        log.info(
            "spec %s deleted by %s (revision %d): %d node(s) change",
            name,
            caller,
            stored.revision,
            len(plan),
        )
        self._controller.reconcile_all()
        self._rollouts.poke()
        return admin_pb.DeleteSpecResponse(spec=await self._spec_message(stored, name), plan=plan)

    # ---- rollouts ----

    async def _latest_rollout(self, name: str) -> Rollout:
        await self._existing(name)
        rollout = await self._store.latest_rollout(name)
        if rollout is None:
            raise NotFound(f"spec {name} has no rollout")
        return rollout

    async def get_rollout(self, request: admin_pb.GetRolloutRequest) -> admin_pb.GetRolloutResponse:
        rollout = await self._latest_rollout(validate.check_id("spec", request.spec))
        return admin_pb.GetRolloutResponse(rollout=await self._rollout_message(rollout))

    async def set_rollout_state(
        self, request: admin_pb.SetRolloutStateRequest
    ) -> admin_pb.SetRolloutStateResponse:
        name = validate.check_id("spec", request.spec)
        if request.action not in ACTIONS:
            raise InvalidArgument(f"action {request.action[:32]!r} is not pause or resume")
        rollout = await self._latest_rollout(name)
        source, target = (RUNNING, PAUSED) if request.action == "pause" else (PAUSED, RUNNING)
        if rollout.state != target:
            if rollout.state != source:
                raise FailedPrecondition(
                    f"the rollout of {name} revision {rollout.revision} is {rollout.state}: "
                    f"only a {source} rollout can be {'paused' if target == PAUSED else 'resumed'}"
                )
            caller = str(current_call().identity)
            reason = f"{'paused' if target == PAUSED else 'resumed'} by {caller}"
            if not await self._store.set_rollout_state(
                rollout.id, state=target, reason=reason, now=self._clock(), only_from=(source,)
            ):
                raise FailedPrecondition(f"the rollout of {name} changed meanwhile: re-run")
            log.info("rollout of %s revision %d %s", name, rollout.revision, reason)
            self._rollouts.poke()
            rollout = await self._latest_rollout(name)
        return admin_pb.SetRolloutStateResponse(rollout=await self._rollout_message(rollout))
