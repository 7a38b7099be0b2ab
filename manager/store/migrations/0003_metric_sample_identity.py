"""Host metric samples are identified by (node, type, timestamp).

Duplicates already stored (a Daemon resending a report whose answer it lost) are
deleted first, keeping the oldest row, so the unique constraint can be added.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.migrations.constraints import UniqueConstraint


class Migration(migrations.Migration):
    dependencies = [("manager", "0002_liveness_agents_events")]

    initial = False

    operations = [
        ops.RunSQL(
            "DELETE FROM fleet_metric_sample WHERE id NOT IN "
            "(SELECT MIN(id) FROM fleet_metric_sample GROUP BY node_id, type, timestamp)",
            reverse_sql="SELECT 1",
        ),
        ops.AddConstraint(
            model_name="MetricSample",
            constraint=UniqueConstraint(fields=("node_id", "type", "timestamp"), name=None),
        ),
    ]
