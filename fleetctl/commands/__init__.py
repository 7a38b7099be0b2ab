"""fleetctl's command groups, one module per area."""
