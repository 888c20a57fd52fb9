#!/usr/bin/env bash
# Applies pgstac's migrations to the database (run by the deployment script in postgres.bicep).
# Reads the libpq variables PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE, and PYPGSTAC_VERSION.
# Idempotent: `pypgstac migrate` on a current schema changes nothing.
set -euo pipefail
: "${PGHOST:?}" "${PGDATABASE:?}" "${PGUSER:?}" "${PGPASSWORD:?}" "${PYPGSTAC_VERSION:?}"

# The Azure CLI image has python3; pip is not always there.
if ! python3 -m pip --version >/dev/null 2>&1; then
  if command -v tdnf >/dev/null; then tdnf install -y -q python3-pip
  elif command -v apk >/dev/null; then apk add --no-cache -q py3-pip
  else python3 -m ensurepip
  fi
fi

# Into a folder of its own, leaving the image's Python (and the az CLI) untouched.
LIB=$(mktemp -d)
for attempt in 1 2 3; do
  python3 -m pip install -q --disable-pip-version-check --target "$LIB" "pypgstac[psycopg]==${PYPGSTAC_VERSION}" && break
  [ "$attempt" = 3 ] && { echo "pip install pypgstac failed" >&2; exit 1; }
  sleep $((attempt * 10))
done

# A server that was just created may still refuse connections for a moment.
for attempt in 1 2 3 4 5 6; do
  if PYTHONPATH="$LIB" python3 -m pypgstac.pypgstac migrate; then
    version=$(PYTHONPATH="$LIB" python3 -m pypgstac.pypgstac version)
    echo "pgstac ${version} in ${PGDATABASE} on ${PGHOST}"
    printf '{"pgstacVersion": "%s"}' "$version" > "${AZ_SCRIPTS_OUTPUT_PATH:-/dev/null}"
    exit 0
  fi
  sleep $((attempt * 10))
done
echo "pypgstac migrate failed" >&2
exit 1
