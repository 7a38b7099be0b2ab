"""DaemonService, split by audience: ``control_service`` (the Manager and admins, over
mutual TLS) and ``agent_service`` (local agents, over the Unix socket, with tokens)."""
