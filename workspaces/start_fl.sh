#!/usr/bin/env bash
# Start a provisioned federation on this machine: the server, then the first N clients.
#   ./start_fl.sh N [PROD_DIR]
# PROD_DIR defaults to the newest prod_NN of the only project provisioned here.
# Each participant runs in the background from its kit (startup/start.sh), logging to
# <kit>/log.txt with its pid in <kit>/daemon.pid; the kits started are listed in
# .started_kits so that ./stop_fl.sh stops exactly those processes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: $0 N [PROD_DIR]   (N: how many clients to start)" >&2; exit 2; }
[ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]] || usage
N="$1"
if [ $# -ge 2 ]; then
  PROD="$(cd "$2" && pwd)"
else
  mapfile -t projects < <(find "$HERE" -mindepth 1 -maxdepth 1 -type d -exec test -d '{}/state' ';' -print | sort)
  [ "${#projects[@]}" -eq 1 ] || { echo "$0: found ${#projects[@]} provisioned projects in $HERE; give PROD_DIR" >&2; exit 2; }
  PROD="$(ls -d "${projects[0]}"/prod_* | sort -V | tail -n 1)"
fi
[ -d "$PROD" ] || { echo "$0: $PROD is not a folder" >&2; exit 2; }
if [ -z "${FEDSEC:-}" ] && [ -x "$HERE/../.venv/bin/fedsec" ]; then export FEDSEC="$HERE/../.venv/bin/fedsec"; fi
if [ -s "$HERE/.started_kits" ]; then
  echo "$0: a federation started from here is still recorded in $HERE/.started_kits; run ./stop_fl.sh first" >&2
  exit 1
fi

server=""; clients=()
for kit in "$PROD"/*/; do
  kit="${kit%/}"
  if [ -f "$kit/startup/fed_server.json" ]; then server="$kit"; fi
  if [ -f "$kit/startup/fed_client.json" ]; then clients+=("$kit"); fi
done
[ -n "$server" ] || { echo "$0: no server kit in $PROD" >&2; exit 2; }
mapfile -t clients < <(printf '%s\n' "${clients[@]}" | sort -V)
[ "$N" -le "${#clients[@]}" ] || { echo "$0: asked for $N clients, $PROD has ${#clients[@]}" >&2; exit 2; }

: >"$HERE/.started_kits"
start_kit() {
  rm -f "$1/daemon.pid"
  "$1/startup/start.sh"
  echo "$1" >>"$HERE/.started_kits"
}
# The server first, until it listens: sites started meanwhile would only compete for the CPU and back off.
log="$server/log.txt"
offset=$(( $(stat -c %s "$log" 2>/dev/null || echo 0) + 1 ))
start_kit "$server"
for _ in $(seq 300); do
  tail -c +"$offset" "$log" 2>/dev/null | grep -q " listening " && break
  if ! kill -0 "$(cat "$server/daemon.pid")" 2>/dev/null; then
    echo "$0: the server exited; see $log" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  sleep 0.02
done
for ((i = 0; i < N; i++)); do start_kit "${clients[$i]}"; done
echo "started the server and $N clients of $PROD; stop them with $HERE/stop_fl.sh"
