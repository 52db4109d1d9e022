"""Sub-commands for people trying or testing the tool: `demo` and `drill`.

Only wires argparse to the tool modules; imports them lazily so the daemon stays small.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    """Register the tool sub-commands on the main parser's subparsers."""
    _ = argparse  # placeholder until demo/drill land
