"""Agent event history (manager/events.py, docs/manager.md): starts, exits, crash
restarts, FATAL and the operations the Manager relayed, per node and agent. New table
only.
"""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("manager", "0005_enrollment_certificates")]

    initial = False

    operations = [
        ops.CreateModel(
            name="AgentEvent",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("timestamp", fields.FloatField()),
                ("node_id", fields.CharField(max_length=128)),
                ("agent_id", fields.CharField(default="", max_length=128)),
                ("kind", fields.CharField(max_length=16)),
                ("message", fields.CharField(default="", max_length=1024)),
                ("actor", fields.CharField(default="", max_length=255)),
                ("old_status", fields.CharField(default="", max_length=16)),
                ("new_status", fields.CharField(default="", max_length=16)),
                ("pid", fields.IntField(default=0)),
            ],
            options={
                "table": "fleet_agent_event",
                "app": "manager",
                "indexes": [
                    Index(fields=["node_id", "agent_id", "id"]),
                    Index(fields=["agent_id", "id"]),
                ],
                "pk_attr": "id",
                "table_description": (
                    "What happened to an agent (manager/events.py): derived from"
                ),
            },
            bases=["Model"],
        ),
    ]
