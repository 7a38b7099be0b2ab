"""Entry point of the ``fleetctl`` console script."""

from __future__ import annotations


def main() -> None:
    """Run fleetctl with ``sys.argv``; exits with fleetctl's exit codes."""
    from .app import app

    app()


if __name__ == "__main__":
    main()
