"""The plugin side: the code that runs inside Orthanc's process (everything else in the package
runs in the worker processes it supervises).

- entry.py: what Orthanc loads as its PythonScript;
- host.py: the only module that imports `orthanc`; its callbacks only note what arrives
  (channels.py carries the notes) and its REST routes are proxied to the lead worker;
- supervisor/: starts, watches and restarts the workers, copies their metrics.

Nothing here may call Orthanc while a C-STORE is in the stored-instance callback (the GIL and
Orthanc's store lock can deadlock it for good: ARCHITECTURE.md), so nothing here does work.
"""
