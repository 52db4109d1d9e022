"""`sentinel-haproxy drill --compare`: classic HAProxy vs the controller, side by side."""

from __future__ import annotations

import argparse
import sys


def cmd_compare(args: argparse.Namespace) -> int:
    print("drill --compare: not available yet", file=sys.stderr)
    return 2
