#!/usr/bin/env bash
# Starts the gateway in the foreground: real Orthanc, the plugin, the example rules.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p var/orthanc-storage
http_port=$(.venv/bin/python -c 'import json;print(json.load(open("orthanc.json"))["HttpPort"])')
dicom_port=$(.venv/bin/python -c 'import json;print(json.load(open("orthanc.json"))["DicomPort"])')
aet=$(.venv/bin/python -c 'import json;print(json.load(open("orthanc.json"))["DicomAet"])')
echo "RT Gateway: Orthanc Explorer at http://localhost:${http_port}/app/explorer.html"
echo "RT Gateway: REST API at http://localhost:${http_port}/rt-gateway/ (user rtgw, see orthanc.json)"
echo "RT Gateway: DICOM AE ${aet} on port ${dicom_port}"
# DCMTK waits on delayed ACKs without it: 10x slower C-STORE (ARCHITECTURE.md).
export TCP_NODELAY=1
exec Orthanc orthanc.json
