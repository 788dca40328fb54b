#!/usr/bin/env bash
# Start a provisioned federation on this machine: the server, then the first N clients.
#   ./start_fl.sh N [PROD_DIR]
# PROD_DIR defaults to the newest prod_NN of the only project provisioned here.
# Each participant runs in the background from its kit (started together by `fedsec launch`, as each kit's
# startup/start.sh would start it alone), logging to <kit>/log.txt with its pid in <kit>/daemon.pid; the kits
# started are listed in .started_kits so that ./stop_fl.sh stops exactly those processes (by pid, from each
# kit's startup/stop_fl.sh).
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

servers=(); clients=()
for kit in "$PROD"/*/; do
  kit="${kit%/}"
  if [ -f "$kit/startup/fed_server.json" ]; then servers+=("$kit"); fi
  if [ -f "$kit/startup/fed_client.json" ]; then clients+=("$kit"); fi
done
[ "${#servers[@]}" -gt 0 ] || { echo "$0: no server kit in $PROD" >&2; exit 2; }
if [ "${#servers[@]}" -gt 1 ]; then
  echo "$0: $PROD has ${#servers[@]} server replicas ($(basename -a "${servers[@]}" | paste -sd ' ')); replicas share a" \
    "PostgreSQL store and a store folder: start each with its kit's startup/start.sh (README: Running a highly" \
    "available server)" >&2
  exit 2
fi
server="${servers[0]}"
mapfile -t clients < <(printf '%s\n' "${clients[@]}" | sort -V)
[ "$N" -le "${#clients[@]}" ] || { echo "$0: asked for $N clients, $PROD has ${#clients[@]}" >&2; exit 2; }

: >"$HERE/.started_kits"
# Ctrl-C (or TERM) while starting stops whatever was started.
trap 'echo "$0: interrupted; stopping what was started" >&2; "$HERE/stop_fl.sh" >&2 || true; exit 130' INT TERM

# The server's job store (its records, results, tracking and audit) lives in its kit. After a re-provisioning
# (a new prod_NN), carry it over from the newest older prod_NN that has one, and say so.
name="$(basename "$server")"
if [ ! -e "$server/store" ]; then
  for old in $(ls -d "$(dirname "$PROD")"/prod_* 2>/dev/null | sort -V -r); do
    [ "$old" != "$PROD" ] && [ -d "$old/$name/store" ] || continue
    for part in store tracking audit; do
      if [ -d "$old/$name/$part" ]; then cp -a "$old/$name/$part" "$server/$part"; fi
    done
    echo "carried the job store of $name over from $old (records, results, tracking, audit); the copy there is kept"
    break
  done
fi

# The server and every client at once, each kit recorded before it starts: `fedsec launch` imports their code
# once and forks a process per kit (each as its kit's startup/start.sh would start it: its own session, logging
# to <kit>/log.txt, its pid in <kit>/daemon.pid), so the start costs one import, not one per process. A site
# that is up before the server listens dials it again every 0.1 s (for its first 10 s of trying), so it
# registers as soon as the server listens. The launch returns once every process is forked; a kit it refused
# (tampered, already running) is named on stderr and in its log.txt, and not started.
offset=$(( $(stat -c %s "$server/log.txt" 2>/dev/null || echo 0) + 1 ))  # the log holds earlier runs too
kits=()
for kit in "$server" "${clients[@]:0:N}"; do
  echo "$kit" >>"$HERE/.started_kits"; rm -f "$kit/daemon.pid"; kits+=(--kit "$kit")
done
failed=0
"${FEDSEC:-fedsec}" launch "${kits[@]}" >/dev/null & launcher=$!
wait "$launcher" || failed=1
if [ ! -s "$server/daemon.pid" ]; then
  echo "$0: the server did not start" >&2; "$HERE/stop_fl.sh" >/dev/null || true; exit 1
fi

# Then until the server listens and each site registered (or a process exited: that one is reported). One tail
# follows the server's log from the offset (woken by inotify, not polling); bash reads its lines and checks the
# processes with builtins, at least every 0.2 s: forks would take CPU the starting parents need.
alive() { local s; read -r s 2>/dev/null <"/proc/$1/stat" || return 1; s="${s##*) }"; [ "${s%% *}" != Z ]; }
read -r server_pid <"$server/daemon.pid"
waiting=(); pids=()
for kit in "${clients[@]:0:N}"; do
  if read -r pid 2>/dev/null <"$kit/daemon.pid"; then
    waiting+=("$kit"); pids+=("$pid")
  else
    failed=1; echo "$0: ${kit##*/} did not start; see $kit/log.txt" >&2
  fi
done
exec {feed}< <(exec tail -c +"$offset" -s 0.05 -f "$server/log.txt" 2>/dev/null)
feeder=$!
trap 'kill "$feeder" 2>/dev/null || true' EXIT
declare -A registered=()
registration='site=([^ ]+) registered '
listening=0; partial=""; deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
  got=0; IFS= read -r -t 0.2 -u "$feed" line || got=$?
  if [ "$got" -eq 0 ]; then
    line="$partial$line"; partial=""
    [[ "$line" == *" listening "* ]] && listening=1
    [[ "$line" =~ $registration ]] && registered["${BASH_REMATCH[1]}"]=1
  elif [ "$got" -gt 128 ]; then
    partial+="$line"  # timed out, maybe within a line: the rest of it comes with the next read
  else
    sleep 0.2  # the tail ended (it cannot read the log): the checks below still run
  fi
  left=(); left_pids=()
  for i in "${!waiting[@]}"; do
    kit="${waiting[$i]}"; site="${kit##*/}"
    [ -n "${registered[$site]+x}" ] && continue
    if ! alive "${pids[$i]}"; then failed=1; echo "$0: $site exited; see $kit/log.txt" >&2; continue; fi
    left+=("$kit"); left_pids+=("${pids[$i]}")
  done
  waiting=("${left[@]+"${left[@]}"}"); pids=("${left_pids[@]+"${left_pids[@]}"}")
  [ "$listening" -eq 1 ] && [ "${#waiting[@]}" -eq 0 ] && break
  if ! alive "$server_pid"; then
    echo "$0: the server exited; the end of $server/log.txt:" >&2
    tail -c +"$offset" "$server/log.txt" 2>/dev/null | tail -n 5 >&2
    "$HERE/stop_fl.sh" >/dev/null || true
    exit 1
  fi
done
if [ "$listening" -eq 0 ]; then failed=1; echo "$0: the server is not listening after 120 s; see $server/log.txt" >&2; fi
for kit in "${waiting[@]+"${waiting[@]}"}"; do failed=1; echo "$0: ${kit##*/} did not register in 120 s; see $kit/log.txt" >&2; done
if [ "$failed" -ne 0 ]; then
  echo "$0: not everything started; the rest keeps running: stop it with $HERE/stop_fl.sh" >&2
  exit 1
fi
echo "started the server and $N clients of $PROD; stop them with $HERE/stop_fl.sh"
