#!/usr/bin/env bash
# Regenerates the container image's lock files from pyproject.toml, reproducibly:
#   infra/requirements.lock        the runtime dependencies of hamsa-bridge[postgres]
#   infra/build-requirements.lock  the build backend (pyproject's [build-system] requires)
# for CPython 3.12 on Linux (the image's interpreter), with the sha256 of every file of every
# pinned release (so the same lock serves amd64 and arm64 builds; pip checks them with
# --require-hashes).
#
# Reproducible: a pinned uv resolves only releases uploaded before LOCK_DATE, so running this
# again with the same pyproject.toml gives the same files. To take newer releases, move
# LOCK_DATE forward (or run `LOCK_DATE=now infra/lock.sh`) and commit the result.
# Needs python3 (any 3.x with venv) and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK_DATE="${LOCK_DATE:-2026-11-22T00:00:00Z}"
UV_VERSION="0.13.8"
PYTHON_VERSION="3.12"
PLATFORM="x86_64-unknown-linux-gnu"

if [ "$LOCK_DATE" = now ]; then
    LOCK_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --isolated --disable-pip-version-check "uv==$UV_VERSION"
uv="$tmp/venv/bin/uv"

# The postgres extra (psycopg) belongs in the image; warn if pyproject does not define it (yet).
extras=()
if python3 - <<'PY'
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"].get("optional-dependencies", {})
sys.exit(0 if "postgres" in extras else 1)
PY
then
    extras=(--extra postgres)
else
    echo "lock.sh: warning: pyproject.toml has no 'postgres' extra; locking without it" >&2
fi

common=(
    --python-version "$PYTHON_VERSION"
    --python-platform "$PLATFORM"
    --exclude-newer "$LOCK_DATE"
    --generate-hashes
    --no-cache
    --quiet
    --custom-compile-command "infra/lock.sh"
)

UV_NO_CONFIG=1 "$uv" pip compile pyproject.toml "${extras[@]}" "${common[@]}" \
    --output-file infra/requirements.lock

python3 - >"$tmp/build.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
UV_NO_CONFIG=1 "$uv" pip compile "$tmp/build.in" "${common[@]}" \
    --output-file infra/build-requirements.lock
# The temporary input's path would differ on every run; name the real source instead.
sed -i "s|$tmp/build.in|pyproject.toml [build-system] requires|g" infra/build-requirements.lock

echo "lock.sh: wrote infra/requirements.lock ($(grep -c '^[a-z]' infra/requirements.lock) packages)" \
     "and infra/build-requirements.lock ($(grep -c '^[a-z]' infra/build-requirements.lock))," \
     "releases before $LOCK_DATE" >&2
