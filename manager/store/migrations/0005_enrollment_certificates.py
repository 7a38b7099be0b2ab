"""Onboarding and certificates (docs/security.md): join tokens, certificates the Manager
issued or revoked, identity revocations (a removed node), the labels a node got from its
join token, and the shared revocation counter. New tables only.
"""

import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("manager", "0004_specs_rollouts")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Certificate",
            fields=[
                (
                    "serial",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64),
                ),
                ("identity", fields.CharField(default="", db_index=True, max_length=160)),
                ("not_before", fields.FloatField(default=0)),
                ("not_after", fields.FloatField(default=0, db_index=True)),
                ("issued_at", fields.FloatField(default=0)),
                ("issued_by", fields.CharField(default="", max_length=16)),
                ("token_id", fields.CharField(default="", max_length=16)),
                ("revoked_at", fields.FloatField(default=0, db_index=True)),
                ("revoked_reason", fields.CharField(default="", max_length=255)),
                ("revoked_by", fields.CharField(default="", max_length=255)),
                ("revocation_seq", fields.BigIntField(default=0, db_index=True)),
            ],
            options={
                "table": "fleet_certificate",
                "app": "manager",
                "pk_attr": "serial",
                "table_description": (
                    "A certificate the Manager issued, or one revoked by serial t"
                ),
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Counter",
            fields=[
                (
                    "name",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64),
                ),
                ("value", fields.BigIntField(default=0)),
            ],
            options={
                "table": "fleet_counter",
                "app": "manager",
                "pk_attr": "name",
                "table_description": (
                    "A named sequence shared by every Manager on the database (``"
                ),
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="IdentityRevocation",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("identity", fields.CharField(db_index=True, max_length=160)),
                ("not_before_max", fields.FloatField()),
                ("revoked_at", fields.FloatField()),
                ("reason", fields.CharField(default="", max_length=255)),
                ("revoked_by", fields.CharField(default="", max_length=255)),
                ("revocation_seq", fields.BigIntField(default=0, db_index=True)),
            ],
            options={
                "table": "fleet_identity_revocation",
                "app": "manager",
                "pk_attr": "id",
                "table_description": (
                    "Every certificate of ``identity`` with notBefore at or befor"
                ),
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="JoinToken",
            fields=[
                (
                    "id",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16),
                ),
                ("secret_sha256", fields.CharField(max_length=64)),
                ("created_at", fields.FloatField()),
                ("expires_at", fields.FloatField(db_index=True)),
                ("max_uses", fields.IntField(default=0)),
                ("uses", fields.IntField(default=0)),
                (
                    "labels",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("description", fields.CharField(default="", max_length=255)),
                ("created_by", fields.CharField(default="", max_length=255)),
                ("revoked_at", fields.FloatField(default=0)),
                (
                    "nodes",
                    fields.JSONField(
                        default=list,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
            ],
            options={
                "table": "fleet_join_token",
                "app": "manager",
                "pk_attr": "id",
                "table_description": (
                    "A join token (docs/security.md): only the SHA-256 of its sec"
                ),
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="NodeEnrollment",
            fields=[
                (
                    "node_id",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128),
                ),
                (
                    "labels",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("token_id", fields.CharField(default="", max_length=16)),
                ("joined_at", fields.FloatField(default=0)),
            ],
            options={
                "table": "fleet_node_enrollment",
                "app": "manager",
                "pk_attr": "node_id",
                "table_description": (
                    "What the Manager decided about a node when it joined: the to"
                ),
            },
            bases=["Model"],
        ),
    ]
