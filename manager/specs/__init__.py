"""Desired state on the Manager: which spec revision each node should run, the
controller that pushes it, and rollouts (docs/specs.md, docs/manager.md)."""
