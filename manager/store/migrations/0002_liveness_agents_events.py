from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("manager", "0001_initial")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Agent",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("node_id", fields.CharField(max_length=128)),
                ("agent_id", fields.CharField(db_index=True, max_length=128)),
                ("type", fields.CharField(default="", max_length=64)),
                ("status", fields.CharField(default="", db_index=True, max_length=16)),
                ("pid", fields.IntField(default=0)),
                ("version", fields.CharField(default="", max_length=64)),
                ("start_time", fields.BigIntField(default=0)),
                ("restart_count", fields.IntField(default=0)),
                ("last_heartbeat", fields.BigIntField(default=0)),
                ("status_reason", fields.CharField(default="", max_length=1024)),
                ("config_hash", fields.CharField(default="", max_length=128)),
                ("updated_at", fields.FloatField(default=0)),
            ],
            options={
                "table": "fleet_agent",
                "app": "manager",
                "unique_together": (("node_id", "agent_id"),),
                "pk_attr": "id",
                "table_description": "An agent as last reported by its Daemon (SyncAgentStates).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="NodeEvent",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("node_id", fields.CharField(max_length=128)),
                ("timestamp", fields.FloatField()),
                ("old_status", fields.CharField(default="", max_length=16)),
                ("new_status", fields.CharField(default="", max_length=16)),
                ("reason", fields.CharField(default="", max_length=1024)),
            ],
            options={
                "table": "fleet_node_event",
                "app": "manager",
                "indexes": [Index(fields=["node_id", "timestamp"])],
                "pk_attr": "id",
                "table_description": "A node status transition and why it happened.",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Node",
            name="grace",
            field=fields.FloatField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name="Node",
            name="last_heartbeat_reported",
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name="Node",
            name="offline_after",
            field=fields.FloatField(default=0, db_index=True, db_default=0),
        ),
        ops.AddField(
            model_name="Node",
            name="status_since",
            field=fields.FloatField(default=0, db_default=0),
        ),
    ]
