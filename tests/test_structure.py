"""The daemon stands alone: its entry point loads nothing of the lab, and the import rules in
.importlinter hold (the lint step checks them too; this keeps `pytest` alone honest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from itest_support import REPO_ROOT


def _lab_modules_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             "import json\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'lab')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_daemon_entry_point_imports_no_lab_module() -> None:
    """Importing the CLI, building its parser and loading settings for `run` (what the daemon
    does before its loop) leaves every lab module unloaded."""
    code = (
        "from controller import cli\n"
        "args = cli.build_parser().parse_args(['run', '--sentinel', '127.0.0.1:1', "
        "'--haproxy-socket', '/nonexistent'])\n"
        "cli.settings_from(args)\n"
        "import controller.loop, controller.metrics, controller.webhooks, controller.healthcheck\n"
    )
    assert _lab_modules_after(code) == []


def test_lab_commands_are_handed_to_the_lab() -> None:
    """`sentinel-haproxy demo --help` is answered by the lab's own parser (its flags shown)."""
    out = subprocess.run([sys.executable, "-m", "controller", "demo", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "--first-port" in out.stdout


def test_import_contracts_hold() -> None:
    """lint-imports keeps every contract in .importlinter (the daemon never imports the lab,
    the lab's layers point one way)."""
    exe = Path(sys.executable).parent / "lint-imports"  # installed beside this interpreter
    out = subprocess.run([str(exe)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
