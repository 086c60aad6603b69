"""The `interp` command line: `app` routes (interp.cli.app), one module per command group holds the commands."""

from __future__ import annotations

from interp.cli.app import app, main

__all__ = ["app", "main"]
