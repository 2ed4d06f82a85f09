"""What a site hook script may import from the gateway: the Refuse exception, nothing else.

The hook child process loads this file by path and registers it as
``orthanc_plugin.transform.hook_api`` without importing the gateway package, so a script sees
exactly this module. It must therefore import nothing from the gateway (pydicom only).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom import Dataset

# The signature of a hook's entry point: the dataset in, a dataset (changed) or None (unchanged).
Process = Callable[[Dataset], Dataset | None]


# Named as the verb a script uses (raise Refuse(...)) rather than ...Error.
class Refuse(Exception):
    """Raised by a hook script to refuse a dataset; the object is quarantined with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
