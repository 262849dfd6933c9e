"""Allows ``python -m jailsyncd``; delegates to the CLI."""

from jailsyncd.cli import main

raise SystemExit(main())
