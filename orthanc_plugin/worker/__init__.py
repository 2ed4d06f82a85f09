"""The worker process: the gateway's real work, outside Orthanc's interpreter, Orthanc over HTTP."""
