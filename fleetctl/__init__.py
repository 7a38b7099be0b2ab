"""fleetctl: the operator's command line for a Fleet (Typer + Rich, gRPC to the Manager)."""

__version__ = "0.1.0"
