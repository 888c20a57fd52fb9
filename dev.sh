#!/usr/bin/env bash
# One entry point for developers and CI.
#   ./dev.sh run    install what is missing, start Azurite + the local Functions host on :7071, show a job
#                   running, then stay in the foreground; Ctrl-C stops everything this script started.
#   ./dev.sh test   install what is missing, run the default test tier (tests start and stop their own
#                   services); exit code = the suite's. Extra arguments go to pytest.
#                   --all runs every tier (default, chaos, e2e, browser, infra, slow); --tier NAME runs one.
#   ./dev.sh setup  only install.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
RUN_DIR="$ROOT/.run"
PORT="${PORT:-7071}"
PIDS=()

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {  # apt_install PKG... : install Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "could not install ${missing[*]} (need root or sudo)"
}

find_python() {
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$c"; return 0
    fi
  done
  die "Python 3.11 or newer is needed"
}

setup_python() {
  local py; py=$(find_python)
  if [ ! -x "$PY" ]; then
    log "creating virtual environment .venv"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"; apt_install python3-venv; "$py" -m venv "$VENV"
    fi
  fi
  local want; want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$VENV/.requirements-hash" 2>/dev/null)" != "$want" ]; then
    log "installing Python requirements"
    "$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2> >(grep -v "is ignored" >&2)
    echo "$want" > "$VENV/.requirements-hash"
  fi
}

setup_node() {
  command -v node >/dev/null || apt_install nodejs npm
  command -v npm >/dev/null || apt_install npm
  local want; want=$(sha256sum package.json | cut -c1-16)
  if [ ! -x node_modules/.bin/azurite ] || [ "$(cat node_modules/.package-hash 2>/dev/null)" != "$want" ]; then
    log "installing Azurite (npm, pinned in package.json)"
    npm install --no-audit --no-fund --loglevel=error 2>&1 | grep -v "Unknown user config" >&2 || true
    [ -x node_modules/.bin/azurite ] || die "npm install did not provide node_modules/.bin/azurite"
    echo "$want" > node_modules/.package-hash
  fi
}

setup_postgres() {  # PostgreSQL + PostGIS from Debian; each run starts a private cluster (tests/postgres_proc.py)
  local v
  for v in 15 16 17; do
    if [ -x "/usr/lib/postgresql/$v/bin/postgres" ] && dpkg -s "postgresql-$v-postgis-3" >/dev/null 2>&1; then
      return 0
    fi
  done
  if apt-cache policy postgresql-15-postgis-3 2>/dev/null | grep -q "Candidate: [0-9]"; then
    apt_install postgresql-15 postgresql-15-postgis-3
  else
    as_root apt-get update -qq || true
    apt_install postgresql-15 postgresql-15-postgis-3
  fi
}

setup_browser() {  # Debian's Chromium + its driver: tests/test_dashboard.py drives the dashboard headless
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  ( apt_install chromium chromium-driver ) || log "chromium not installed: the browser test will be skipped"
}

setup() { setup_python; setup_node; setup_postgres; setup_browser; }

stop_all() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && log "stopped pid $pid"
  done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null; done
  PIDS=()
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT NAME
  for _ in $(seq 1 150); do port_busy "$1" && return 0; sleep 0.2; done
  die "$2 did not start listening on port $1"
}

start_azurite() {
  for p in 10000 10001 10002; do port_busy "$p" && die "port $p is in use (another Azurite?); stop it first"; done
  mkdir -p "$RUN_DIR" .azurite
  node_modules/.bin/azurite --silent --skipApiVersionCheck --disableTelemetry --location .azurite \
    --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 > "$RUN_DIR/azurite.log" 2>&1 &
  PIDS+=($!)
  wait_port 10002 Azurite; wait_port 10001 Azurite; wait_port 10000 Azurite
  log "Azurite running (pid ${PIDS[-1]}, data in .azurite/, log in .run/azurite.log)"
}

start_postgres() {  # PostgreSQL + PostGIS + pgstac on PGSTAC_PORT (5439), data in .pgdata/
  export PGSTAC_HOST=127.0.0.1 PGSTAC_PORT="${PGSTAC_PORT:-5439}" PGSTAC_DBNAME=pgstac_test PGSTAC_USER=postgres
  export PGSTAC_PASSWORD="${PGSTAC_PASSWORD:-pgstac-dev}"
  port_busy "$PGSTAC_PORT" && die "port $PGSTAC_PORT is in use; set PGSTAC_PORT to another"
  "$PY" tests/postgres_proc.py --location .pgdata --port "$PGSTAC_PORT" > "$RUN_DIR/postgres.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q "pgstac ready" "$RUN_DIR/postgres.log" && break; sleep 0.2; done
  grep -q "pgstac ready" "$RUN_DIR/postgres.log" || { cat "$RUN_DIR/postgres.log" >&2; die "PostgreSQL did not start"; }
  log "PostgreSQL + PostGIS + pgstac running on port $PGSTAC_PORT (data in .pgdata/, log in .run/postgres.log)"
}

demo() {
  local base="http://localhost:$PORT/api" body id state
  log "submitting a hello_world job (n=5):"
  body=$(curl -s -X POST "$base/jobs/submit/hello_world" -H 'Content-Type: application/json' \
    -d "{\"n\": 5, \"message\": \"hello $(date +%s)\"}")
  echo "$body"
  id=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)["job_id"])' <<<"$body")
  for _ in $(seq 1 100); do
    state=$(curl -s "$base/jobs/status/$id")
    "$PY" -c 'import json,sys; sys.exit(json.load(sys.stdin)["status"] in ("completed","failed","cancelled"))' \
      <<<"$state" || break
    sleep 0.3
  done
  log "its status:"; "$PY" -m json.tool <<<"$state"
  log "uploading a raster and running process_raster (validate -> COG -> STAC item in pgstac):"
  AzureWebJobsStorage=UseDevelopmentStorage=true "$PY" - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from config import get_settings
from repositories import Repositories
sample = Path("../shared/testdata/rasters/RGB.byte.tif")
if not sample.exists():  # no shared data beside the clone: write a small synthetic GeoTIFF
    import numpy as np, rasterio
    from rasterio.transform import from_origin
    sample = Path(".run/demo.tif")
    y, x = np.mgrid[0:256, 0:256]
    with rasterio.open(sample, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 30, 30)) as dst:
        dst.write(((x + y) % 256).astype("uint8"), 1)
settings = get_settings()
store = Repositories(settings).rasters
store.ensure_container(settings.input_container)
store.upload(settings.input_container, "demo/RGB.byte.tif", sample)
print(f"uploaded {sample} to {settings.input_container}/demo/RGB.byte.tif")
PY
  "$PY" cli.py --url "$base" submit process_raster blob=demo/RGB.byte.tif --wait || true
  cat <<MSG

Local Functions host on http://localhost:$PORT (Ctrl-C stops it, Azurite and PostgreSQL). Try:
  the dashboard: http://localhost:$PORT/api/dashboard/
  ./cli.py types
  ./cli.py submit hello_world n=50 --wait
  curl -s -X POST http://localhost:$PORT/api/jobs/submit/hello_world -H 'Content-Type: application/json' -d '{"n": 10}'
  curl -s http://localhost:$PORT/api/jobs/status/<job_id>
MSG
}

cmd_run() {
  setup
  trap 'stop_all; exit 0' INT TERM
  trap stop_all EXIT
  start_azurite
  start_postgres
  if [ ! -f local.settings.json ]; then
    cp local.settings.json.example local.settings.json
    log "created local.settings.json from local.settings.json.example (edit it to change settings)"
  fi
  port_busy "$PORT" && die "port $PORT is in use"
  "$PY" local_host.py --port "$PORT" --settings local.settings.json &
  PIDS+=($!)
  wait_port "$PORT" "local host"
  demo
  wait "${PIDS[-1]}"
}

# Test tiers, by pytest marker (pytest.ini): "default" is what `./dev.sh test` runs; `--all` runs every tier
# in this order (.ci/run does); `--tier NAME` runs one (repeatable). docs/testing.md gives each tier's time.
TIERS=(default chaos e2e browser infra slow)
tier_marks() {
  case "$1" in
    default) echo "not (slow or chaos or e2e or browser or infra)" ;;
    chaos|e2e) echo "$1 and not slow" ;;
    browser|infra|slow) echo "$1" ;;
    *) die "unknown test tier '$1' (known: ${TIERS[*]})" ;;
  esac
}

cmd_test() {
  setup
  local tiers=() args=() rc=0 t start code summary=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --all) tiers=("${TIERS[@]}") ;;
      --tier) [ $# -ge 2 ] || die "--tier needs a name (known: ${TIERS[*]})"; tier_marks "$2" >/dev/null; tiers+=("$2"); shift ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  if [ ${#tiers[@]} -eq 0 ]; then  # the default tier, or whatever -m the caller gives
    "$PY" -m pytest "${args[@]}" || rc=$?
    [ $rc -eq 5 ] && { log "pytest collected no tests"; rc=1; }
    return $rc
  fi
  export CHAOS_SOAK_RUNS="${CHAOS_SOAK_RUNS:-6}"  # the soak in the slow tier: a bounded sample (100: hours)
  for t in "${tiers[@]}"; do
    log "tier $t: pytest -m \"$(tier_marks "$t")\""
    start=$(date +%s); code=0
    "$PY" -m pytest -m "$(tier_marks "$t")" "${args[@]}" || code=$?
    [ $code -eq 5 ] && { log "tier $t collected no tests"; code=1; }
    summary+=("$t: exit $code in $(( $(date +%s) - start )) s")
    [ $code -ne 0 ] && rc=$code
  done
  log "tiers: ${summary[*]}"
  return $rc
}

case "${1:-}" in
  run) shift; cmd_run "$@" ;;
  test) shift; cmd_test "$@" ;;
  setup) setup ;;
  *) echo "usage: ./dev.sh run | test [--all | --tier NAME] [pytest args] | setup" >&2; exit 2 ;;
esac
