"""Click's exception types, wherever this Typer keeps them (vendored since Typer 0.2x)."""

from __future__ import annotations

try:  # Typer >= 0.20 vendors Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

__all__ = ["click_exceptions"]
