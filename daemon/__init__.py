"""The Fleet Daemon: one per host. Registers the host with the Manager, supervises its
agents (processes), keeps their resource history, and serves DaemonService — to the
Manager and admins over mutual TLS, to local agents over a Unix socket.

Start at :mod:`daemon.app` (how the parts fit) or ``docs/daemon.md``.
"""
