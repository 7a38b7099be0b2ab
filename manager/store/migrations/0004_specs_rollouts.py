"""Desired state (docs/specs.md): specs, their signed revisions, per-node spec states,
rollouts and their nodes; agents gain the spec and revision they come from.

The two agent columns carry database defaults, so an existing fleet_agent table with
rows is upgraded in place.
"""

import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("manager", "0003_metric_sample_identity")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Rollout",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("spec", fields.CharField(db_index=True, max_length=128)),
                ("revision", fields.BigIntField()),
                ("from_revision", fields.BigIntField(default=0)),
                ("state", fields.CharField(db_index=True, max_length=16)),
                ("reason", fields.TextField(default="", unique=False)),
                (
                    "policy",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("wave", fields.IntField(default=0)),
                ("rollback_revision", fields.BigIntField(default=0)),
                ("rollback_payload", fields.BinaryField(null=True)),
                ("rollback_signature", fields.BinaryField(null=True)),
                ("rollback_signer_cert", fields.BinaryField(null=True)),
                ("rollback_signed_by", fields.CharField(default="", max_length=255)),
                ("started_at", fields.FloatField(default=0)),
                ("updated_at", fields.FloatField(default=0)),
                ("started_by", fields.CharField(default="", max_length=255)),
            ],
            options={
                "table": "fleet_rollout",
                "app": "manager",
                "pk_attr": "id",
                "table_description": "Moving a spec's nodes to a new revision in waves.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RolloutNode",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("rollout_id", fields.BigIntField(db_index=True)),
                ("node_id", fields.CharField(max_length=128)),
                ("wave", fields.IntField(default=0)),
                ("state", fields.CharField(default="in_progress", max_length=16)),
                ("pushed_at", fields.FloatField(default=0)),
                ("finished_at", fields.FloatField(default=0)),
                ("reason", fields.CharField(default="", max_length=1024)),
            ],
            options={
                "table": "fleet_rollout_node",
                "app": "manager",
                "unique_together": (("rollout_id", "node_id"),),
                "pk_attr": "id",
                "table_description": "A node a rollout moved: when, in which wave, how it went.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Spec",
            fields=[
                (
                    "name",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128),
                ),
                ("revision", fields.BigIntField(default=0)),
                ("next_revision", fields.BigIntField(default=1)),
                ("deleted", fields.BooleanField(default=False)),
                ("updated_at", fields.FloatField(default=0)),
                ("updated_by", fields.CharField(default="", max_length=255)),
            ],
            options={
                "table": "fleet_spec",
                "app": "manager",
                "pk_attr": "name",
                "table_description": "A central spec: its current and next revision.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SpecNodeState",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("node_id", fields.CharField(max_length=128)),
                ("name", fields.CharField(db_index=True, max_length=128)),
                ("revision", fields.BigIntField(default=0)),
                ("running_revision", fields.BigIntField(default=0)),
                ("status", fields.CharField(default="", max_length=16)),
                ("reason", fields.CharField(default="", max_length=1024)),
                ("updated_at", fields.FloatField(default=0)),
            ],
            options={
                "table": "fleet_spec_node_state",
                "app": "manager",
                "unique_together": (("node_id", "name"),),
                "pk_attr": "id",
                "table_description": "How one spec stands on one node, as its Daemon reported it.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SpecRevision",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("name", fields.CharField(max_length=128)),
                ("revision", fields.BigIntField()),
                ("kind", fields.CharField(max_length=16)),
                ("payload", fields.BinaryField()),
                ("signature", fields.BinaryField()),
                ("signer_cert", fields.BinaryField()),
                ("signed_by", fields.CharField(default="", max_length=255)),
                ("applied_by", fields.CharField(default="", max_length=255)),
                ("created_at", fields.FloatField()),
            ],
            options={
                "table": "fleet_spec_revision",
                "app": "manager",
                "unique_together": (("name", "revision"),),
                "pk_attr": "id",
                "table_description": "One revision of a spec exactly as signed, with who and when.",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Agent",
            name="spec",
            field=fields.CharField(default="", db_default="", max_length=128),
        ),
        ops.AddField(
            model_name="Agent",
            name="spec_revision",
            field=fields.BigIntField(default=0, db_default=0),
        ),
    ]
