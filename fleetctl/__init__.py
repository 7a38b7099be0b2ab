"""Fleet fleetctl."""
