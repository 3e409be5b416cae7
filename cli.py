"""`hokusai`: the command line of the Hokusai model registration service (docs/cli.md).

The commands live in `hokusai_client.commands`, over the Python client
`hokusai_client.HokusaiClient` (docs/python-client.md); this file is the entry point
(`hokusai = "cli:main"`, or `python cli.py`).
"""

from __future__ import annotations

from hokusai_client import __version__ as VERSION
from hokusai_client.commands import app, main
from hokusai_client.commands.errors import Exit, exit_for_status

__all__ = ["VERSION", "Exit", "app", "exit_for_status", "main"]

if __name__ == "__main__":
    main()
