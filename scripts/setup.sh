#!/usr/bin/env bash
# Installs what the gateway needs when it is missing: Debian's Orthanc, its Python plugin, DCMTK,
# and the venv at .venv made with the interpreter the plugin embeds (/usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need_apt+=(orthanc-python)
# The DICOMweb tests' receiving server (a second Orthanc with Debian's DICOMweb plugin).
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# systemd-analyze verifies deploy/rt-gateway.service; debootstrap makes the trixie test root.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
# The queue's second engine (several nodes on one PostgreSQL): the tests start their own server.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# Orthanc nodes sharing one PostgreSQL index (several gateway nodes; tests/integration).
[ -e /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so ] || need_apt+=(orthanc-postgresql)
# The DICOM front of several nodes (deploy/several-nodes/haproxy.cfg), run by its test.
[ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# opencv-python (pulled by rt-utils for bench/contours.py) loads libGL and GLib.
dpkg -s libgl1 >/dev/null 2>&1 || need_apt+=(libgl1)
dpkg -s libglib2.0-0 >/dev/null 2>&1 || need_apt+=(libglib2.0-0)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
  || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# The Debian package starts a system Orthanc on 4242/8042 where systemd runs; ours uses its own ports.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with /usr/bin/python3"
  /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
