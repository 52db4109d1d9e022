"""Sub-commands for people trying or testing the tool: `demo` and `drill`.

Only wires argparse to the tool modules (controller/demo.py, controller/drill.py); the heavy
parts (local stacks, plots) are imported when a tool runs, so the daemon stays small.
"""

from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    """Register the tool sub-commands on the main parser's subparsers."""
    from controller import demo, drill

    demo.add_parser(sub)
    drill.add_parser(sub)
