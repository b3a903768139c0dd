#!/usr/bin/env bash
# Installs what recon-service needs: system libraries (apt-get, when root) and .venv.
# Called by `make install` (and so by `make run` / `make test` on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "recon-service needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

# open3d links libusb and libgomp; OpenCV and pycolmap need nothing else on Debian/Ubuntu.
SYSTEM_PACKAGES="libusb-1.0-0 libgomp1"
# The tests start a real redis-server (Celery broker and worker events) and run the Khronos glTF
# Validator with Node on every GLB they produce; without them those checks are skipped.
TEST_PACKAGES="redis-server nodejs"
missing=""
for pkg in $SYSTEM_PACKAGES $TEST_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing system packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        required=""
        for pkg in $missing; do
            case " $TEST_PACKAGES " in *" $pkg "*) ;; *) required="$required $pkg" ;; esac
        done
        echo "missing system packages:$missing" >&2
        echo "install them first, e.g.: sudo apt-get install$missing" >&2
        if [ -n "$required" ]; then
            exit 1
        fi
        echo "(only the tests need them; the tests that do are skipped until they are installed)" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Every version comes from the lock file (make lock refreshes it): the same on every machine and in CI.
.venv/bin/python -m pip install -q -c requirements.lock -e '.[pipeline,s3,celery,dev]'
echo "installed into .venv (locked versions from requirements.lock)"
# The glTF Validator (npm gltf-validator, pinned sha512) into .cache/gltf-validator, for the tests.
if command -v node >/dev/null 2>&1; then
    .venv/bin/python scripts/install_gltf_validator.py || echo "could not install gltf-validator; the GLB validation in the tests is skipped" >&2
fi
