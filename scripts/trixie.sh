#!/usr/bin/env bash
# A second Orthanc for the tests: Debian trixie's Orthanc 1.12 + orthanc-python 5.0 + Python 3.13,
# in a `debootstrap --variant=minbase trixie` folder made once and cached (about 80 s to make).
#
#   scripts/trixie.sh prepare   make (or reuse) the folder and its venv of the pinned requirements
#   scripts/trixie.sh mount     bind /proc, /dev, /tmp and this checkout into it (tests run Orthanc
#                               there with `chroot`, so the paths the tests write are the same)
#   scripts/trixie.sh umount
#   scripts/trixie.sh unit      prepare, mount, run the pure-logic unit tests with trixie's
#                               Python 3.13 (the workers' interpreter there), unmount
#   scripts/trixie.sh test      the unit tests as above, then the integration tests that matter
#                               with the gateways in it [pytest args go to the latter]
#
# The folder is RTGW_TRIXIE_ROOT (default /var/cache/rtgw/trixie). Needs root (debootstrap, chroot,
# mount); the test command is run as root on CI machines, else this uses sudo -n.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$(pwd)
ROOT=${RTGW_TRIXIE_ROOT:-/var/cache/rtgw/trixie}
MIRROR=${RTGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV=/opt/rtgw-venv
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
# pip's CA bundle on this machine (a proxy may re-sign PyPI): the one pip's configuration names.
CA_BUNDLE=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}

in_root() {
  # A clean environment: the host's PIP_* settings name folders that do not exist in the chroot.
  $SUDO chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 "$@"
}

is_mounted() { mountpoint -q "$1" 2>/dev/null; }

mount_all() {
  for fs in proc dev tmp; do $SUDO mkdir -p "$ROOT/$fs"; done
  is_mounted "$ROOT/proc" || $SUDO mount -t proc proc "$ROOT/proc"
  is_mounted "$ROOT/dev" || $SUDO mount --rbind /dev "$ROOT/dev"
  is_mounted "$ROOT/tmp" || $SUDO mount --bind /tmp "$ROOT/tmp"
  $SUDO mkdir -p "$ROOT$CHECKOUT"
  is_mounted "$ROOT$CHECKOUT" || $SUDO mount --bind "$CHECKOUT" "$ROOT$CHECKOUT"
}

umount_all() {
  for target in "$ROOT$CHECKOUT" "$ROOT/tmp" "$ROOT/dev" "$ROOT/proc"; do
    if is_mounted "$target"; then $SUDO umount -l "$target" || true; fi
  done
}

# The test runner's own pins, for the unit tests run with the chroot's Python.
test_pins() { grep -E '^(pytest|pytest-timeout)==' requirements-dev.txt; }

prepare() {
  # The packages named here are part of what a ready root holds: adding one prepares it again.
  want=$( (cat requirements.txt; test_pins; echo postgresql orthanc-postgresql) | sha256sum \
    | cut -d' ' -f1)
  if [ -f "$ROOT/.rtgw-ready" ] && [ "$(cat "$ROOT/.rtgw-ready")" = "$want" ]; then
    echo "trixie: reusing $ROOT"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends debootstrap
  }
  if [ ! -x "$ROOT/usr/sbin/Orthanc" ]; then
    echo "trixie: debootstrap into $ROOT (about 80 s)"
    $SUDO rm -rf "$ROOT"
    $SUDO mkdir -p "$(dirname "$ROOT")"
    $SUDO debootstrap --variant=minbase \
      --include=orthanc,orthanc-python,python3,python3-venv,ca-certificates \
      trixie "$ROOT" "$MIRROR"
  fi
  $SUDO cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/host-ca.crt"
  $SUDO cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mount_all
  trap umount_all EXIT
  # The queue's PostgreSQL tests start their own server (tests/support/postgres.py): the package
  # only, no service started in the chroot and no default cluster.
  if ! compgen -G "$ROOT/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "trixie: installing postgresql in $ROOT"
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$ROOT/usr/sbin/policy-rc.d" >/dev/null
    $SUDO chmod +x "$ROOT/usr/sbin/policy-rc.d"
    $SUDO mkdir -p "$ROOT/etc/postgresql-common"
    echo 'create_main_cluster = false' | $SUDO tee "$ROOT/etc/postgresql-common/createcluster.conf" >/dev/null
    in_root apt-get update -q
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
  fi
  # Orthanc nodes on one PostgreSQL index (tests/integration/test_orthanc_nodes.py).
  if [ ! -e "$ROOT/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so" ]; then
    echo "trixie: installing orthanc-postgresql in $ROOT"
    in_root apt-get update -q
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      orthanc-postgresql
  fi
  [ -x "$ROOT$VENV/bin/python" ] || in_root /usr/bin/python3 -m venv "$VENV"
  $SUDO cp requirements.txt "$ROOT/tmp/rtgw-requirements.txt"
  test_pins | $SUDO tee -a "$ROOT/tmp/rtgw-requirements.txt" >/dev/null
  in_root "$VENV/bin/python" -m pip install -q -r /tmp/rtgw-requirements.txt
  echo "$want" | $SUDO tee "$ROOT/.rtgw-ready" >/dev/null
  # sed, not head: head leaves early and Orthanc, still writing, dies of SIGPIPE (exit 141).
  in_root /usr/sbin/Orthanc --version | sed -n 1p
}

# The integration tests that matter on a second Orthanc version: forwarding and delivery, plans,
# de-identification and export, overlays, the process model, several nodes on PostgreSQL, the browser.
TRIXIE_TESTS=(tests/integration/test_forwarding.py tests/integration/test_delivery.py
              tests/integration/test_orthanc_nodes.py tests/integration/test_two_nodes.py
              tests/integration/test_harvest_two_nodes.py
              tests/integration/test_storage_commitment.py
              tests/integration/test_plans.py tests/integration/test_deid_export.py
              tests/integration/test_contours.py tests/integration/test_isolation.py
              tests/integration/test_hostile_routes.py tests/integration/test_transfer_syntaxes.py
              tests/integration/test_real_rt_files.py tests/integration/test_vendor_corpus.py
              tests/integration/test_transform.py tests/integration/test_dicomweb.py
              tests/integration/test_hooks.py tests/integration/test_webhooks.py
              tests/integration/test_arrival.py tests/integration/test_resilience.py
              tests/browser)

# Prepared and mounted until this script exits.
ready() {
  prepare
  mount_all
  trap umount_all EXIT
}

run_tests() {
  echo "trixie: $(in_root /usr/sbin/Orthanc --version | sed -n 1p), $(in_root /usr/bin/python3 --version)"
  RTGW_ORTHANC_CHROOT="$ROOT" TCP_NODELAY=1 .venv/bin/python -m pytest -p no:cacheprovider \
    "${TRIXIE_TESTS[@]}" "$@"
}

# Pure logic on Python 3.13 too. Left out: tests of outside tools the chroot does not have
# (dciodvfy, dcmdump, hadolint), which check files, not the interpreter.
UNIT_ONLY_ON_HOST=(--ignore=tests/unit/test_deid_validity.py --ignore=tests/unit/test_rtset.py
                   --ignore=tests/unit/test_deploy_several_nodes.py
                   --ignore=tests/unit/test_deploy.py)

run_unit() {
  echo "trixie: unit tests with $(in_root "$VENV/bin/python" --version)"
  in_root /bin/sh -c "cd '$CHECKOUT' && PYTHONDONTWRITEBYTECODE=1 '$VENV/bin/python' -m pytest \
    -p no:cacheprovider -q tests/unit ${UNIT_ONLY_ON_HOST[*]}"
}

case "${1:-}" in
  prepare) prepare ;;
  unit) ready; run_unit ;;
  test) shift; ready; run_unit; run_tests "$@" ;;
  mount) mount_all ;;
  umount) umount_all ;;
  root) echo "$ROOT" ;;
  *) echo "usage: $0 prepare|mount|umount|root|unit|test [pytest args]" >&2; exit 2 ;;
esac
