"""A systemd unit checked as systemd would: `systemd-analyze verify`, and the folders its
sandbox lets the service write (ReadWritePaths=), for the deploy tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def verified_unit(unit: Path) -> tuple[str, list[Path]]:
    """The unit's text and its writable folders, once `systemd-analyze verify` accepts it."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is installed by scripts/setup.sh"
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = unit.read_text()
    writable = [Path(path.lstrip("-")) for line in text.splitlines()
                if line.startswith("ReadWritePaths=") for path in line.split("=", 1)[1].split()]
    return text, writable
