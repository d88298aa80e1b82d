"""Subcommands of the `qualitune` CLI: each module exposes `register(subparsers)` and sets `func`."""
