import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="MetricSample",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("node_id", fields.CharField(max_length=128)),
                ("type", fields.CharField(max_length=32)),
                ("timestamp", fields.BigIntField(db_index=True)),
                (
                    "values",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
            ],
            options={
                "table": "fleet_metric_sample",
                "app": "manager",
                "indexes": [Index(fields=["node_id", "timestamp"])],
                "pk_attr": "id",
                "table_description": "One host metric sample (ReportMetrics).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Node",
            fields=[
                (
                    "node_id",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128),
                ),
                ("hostname", fields.CharField(default="", max_length=255)),
                ("ip", fields.CharField(default="", max_length=64)),
                ("os", fields.CharField(default="", max_length=64)),
                ("arch", fields.CharField(default="", max_length=64)),
                (
                    "labels",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("daemon_version", fields.CharField(default="", max_length=64)),
                ("agent_version", fields.CharField(default="", max_length=64)),
                ("daemon_address", fields.CharField(default="", max_length=255)),
                ("heartbeat_interval", fields.FloatField(default=0)),
                ("instance_id", fields.CharField(default="", max_length=128)),
                ("status", fields.CharField(default="registering", db_index=True, max_length=16)),
                ("registered_at", fields.FloatField(default=0)),
                ("updated_at", fields.FloatField(default=0)),
                ("last_heartbeat", fields.FloatField(null=True)),
            ],
            options={
                "table": "fleet_node",
                "app": "manager",
                "pk_attr": "node_id",
                "table_description": "One host running a Daemon, as it registered itself.",
            },
            bases=["Model"],
        ),
    ]
