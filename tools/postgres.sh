#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for Tether's tests, under the repository's ignored var/ folder.
#
#   tools/postgres.sh start   # idempotent: init if needed, start if stopped, print the URL
#   tools/postgres.sh url     # print the URL (postgresql+psycopg://...)
#   tools/postgres.sh stop    # stop it (the data stays in var/postgres/)
#
# Uses Debian's `postgresql` package (installed with apt-get when missing and run as root).
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user. It
# listens on 127.0.0.1 only, on a free port chosen at first start and kept in var/postgres/port,
# with trust authentication: it is for tests, never for data that matters.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var/postgres"
DATA="$VAR/data"
PORTFILE="$VAR/port"
LOG="$VAR/server.log"

find_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$dir" && "$(id -u)" == 0 ]]; then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null; }
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  if [[ -z "$dir" ]]; then
    echo "postgres.sh: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
    exit 1
  fi
  echo "$dir"
}

as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
  [[ -f "$PORTFILE" ]] || { echo "postgres.sh: not started yet (tools/postgres.sh start)" >&2; exit 1; }
  echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$PORTFILE")/postgres"
}

start() {
  local bin
  bin="$(find_bin)"
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$VAR"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$VAR"
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  fi
  [[ -f "$PORTFILE" ]] || free_port >"$PORTFILE"
  if as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    url
    return
  fi
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
    "-p $(cat "$PORTFILE") -c listen_addresses=127.0.0.1 -k $VAR -c fsync=off -c full_page_writes=off" >/dev/null \
    || { echo "postgres.sh: start failed; see $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
  url
}

stop() {
  local bin
  bin="$(find_bin)"
  if [[ -f "$DATA/PG_VERSION" ]] && as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) url ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
