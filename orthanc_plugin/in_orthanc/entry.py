"""What Orthanc loads as its PythonScript: puts the venv and this checkout on the path, installs."""

import os
import site
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the checkout: orthanc_plugin/in_orthanc/entry.py
VENV = Path(os.environ.get("RTGW_VENV", ROOT / ".venv"))

# Appended, never prepended: rt-utils pulls the obsolete `dataclasses` backport, which would
# shadow the standard library if it came first (ARCHITECTURE.md).
site.addsitedir(str(VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                    / "site-packages"))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from orthanc_plugin.in_orthanc.host import install  # noqa: E402

install()
