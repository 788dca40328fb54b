"""Text the provisioner writes: start/stop scripts, default policies, the sample project.

Pure data: no logic beyond string formatting.
"""

from __future__ import annotations

START_SH = """#!/usr/bin/env bash
# Start {kind} {name} of fedsec project {project} from this kit.
#   start.sh                  run in the background (log in ../log.txt, pid in ../daemon.pid) and say
#                             "started" only once it is up: the server listening, a site registered
#   start.sh --wait SECONDS   how long to wait for that (default 60; 0: only check that it did not exit at once)
#   start.sh --foreground     run in this terminal
# A second process from this kit is refused, naming the pid that runs. The fedsec command is $FEDSEC, else PATH.
set -euo pipefail
KIT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"
FEDSEC="${{FEDSEC:-fedsec}}"
WAIT=60
case "${{1:-}}" in
  --foreground) exec "$FEDSEC" {kind} --kit "$KIT" ;;
  --wait) [[ "${{2:-}}" =~ ^[0-9]+$ ]] || {{ echo "usage: $0 [--foreground | --wait SECONDS]" >&2; exit 2; }}; WAIT="$2" ;;
  "") ;;
  *) echo "usage: $0 [--foreground | --wait SECONDS]" >&2; exit 2 ;;
esac
# The running process holds an exclusive lock on run/lock and wrote its pid there.
holder() {{
  [ -f "$KIT/run/lock" ] || return 1
  if flock -n "$KIT/run/lock" true 2>/dev/null; then return 1; fi
  head -c 32 "$KIT/run/lock" | tr -dc 0-9
}}
alive() {{ local s; read -r s 2>/dev/null <"/proc/$1/stat" || return 1; s="${{s##*) }}"; [ "${{s%% *}}" != Z ]; }}  # no fork
if pid="$(holder)"; then
  echo "{name} is already running from this kit (pid $pid); stop it with $KIT/startup/stop_fl.sh" >&2
  exit 1
fi
LOG="$KIT/log.txt"
offset=$(( $(stat -c %s "$LOG" 2>/dev/null || echo 0) + 1 ))
# a session of its own: a Ctrl-C or a closed terminal meant for whoever started it never reaches it
setsid nohup "$FEDSEC" {kind} --kit "$KIT" >>"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$KIT/daemon.pid"
case "{kind}" in server) ready=" listening " ;; *) ready=" registered with server" ;; esac
for ((i = 0; ; i++)); do
  if ! alive "$pid"; then
    rm -f "$KIT/daemon.pid"
    echo "{name} did not start: it exited at once. The end of $LOG:" >&2
    tail -c +"$offset" "$LOG" | tail -n 5 >&2
    exit 1
  fi
  if tail -c +"$offset" "$LOG" 2>/dev/null | grep -q -- "$ready"; then  # the log may not exist yet
    echo "started {name} (pid $pid), log: $LOG"
    exit 0
  fi
  if [ "$i" -ge $(( WAIT * 10 )) ]; then break; fi
  sleep 0.1
done
if [ "{kind}" = server ]; then
  [ "$WAIT" -eq 0 ] && {{ echo "started {name} (pid $pid), not listening yet; log: $LOG"; exit 0; }}
  echo "{name} (pid $pid) runs but is not listening after $WAIT s; see $LOG" >&2
  exit 1
fi
echo "started {name} (pid $pid), not registered yet (it keeps trying to reach the server); log: $LOG"
"""

STOP_SH = """#!/usr/bin/env bash
# Stop {kind} {name}: the process that actually runs from this kit (it holds run/lock), else the pid in
# ../daemon.pid if that process runs this kit. TERM, then KILL after 10 s.
set -euo pipefail
KIT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"
PIDFILE="$KIT/daemon.pid"
alive() {{ local s; read -r s 2>/dev/null <"/proc/$1/stat" || return 1; s="${{s##*) }}"; [ "${{s%% *}}" != Z ]; }}  # no fork
PID=""
if [ -f "$KIT/run/lock" ] && ! flock -n "$KIT/run/lock" true 2>/dev/null; then
  PID="$(head -c 32 "$KIT/run/lock" | tr -dc 0-9)"
elif [ -f "$PIDFILE" ]; then
  candidate="$(tr -dc 0-9 <"$PIDFILE")"
  if [ -n "$candidate" ] && alive "$candidate" && tr '\\0' ' ' <"/proc/$candidate/cmdline" | grep -q -- "--kit $KIT"; then
    PID="$candidate"
  fi
fi
if [ -z "$PID" ]; then
  rm -f "$PIDFILE"
  echo "{name} is not running"
  exit 0
fi
kill -TERM "$PID" 2>/dev/null || true
for _ in $(seq 100); do alive "$PID" || break; sleep 0.1; done
if alive "$PID"; then kill -KILL "$PID" 2>/dev/null || true; fi
for _ in $(seq 50); do alive "$PID" || break; sleep 0.1; done
rm -f "$PIDFILE"
echo "stopped {name} (pid $PID)"
"""

FL_ADMIN_SH = """#!/usr/bin/env bash
# Open the fedsec admin console of {name} for project {project}.
# The fedsec command is taken from $FEDSEC, else from PATH.
set -euo pipefail
KIT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"
exec "${{FEDSEC:-fedsec}}" admin --kit "$KIT" "$@"
"""

AUTHORIZATION_YML = """# Who may do what on this server, by the role in the admin's certificate.
# Scopes: any | own_org | own_jobs | none. Signed with the kit: change it by re-provisioning.
format: fedsec-authorization/1
roles:
  project_admin:
    {submit_job: any, clone_job: any, manage_job: any, download_job: any, view: any, operate: any}
  org_admin: {submit_job: none, clone_job: none, manage_job: own_org, download_job: own_org, view: any, operate: own_org}
  lead: {submit_job: any, clone_job: own_jobs, manage_job: own_jobs, download_job: own_jobs, view: any, operate: none}
  member: {submit_job: none, clone_job: none, manage_job: none, download_job: none, view: any, operate: none}
"""

SITE_POLICY_YML = """# Which submitters may run jobs with custom code on this site.
# Signed with the kit: change it by re-provisioning.
format: fedsec-site-policy/1
custom_code:
  roles: [project_admin, org_admin, lead]
  orgs: any
"""

SAMPLE_PROJECT = """# A fedsec project: `fedsec provision -p THIS_FILE` makes one startup kit per participant.
api_version: 1
# Project name: letters, digits, '.', '_', '-'. It names the folder under the workspace.
name: example_project
description: An example federation with one server, two sites and one admin.

# Certificate lifetimes in days (optional).
validity:
  root_days: 3650
  leaf_days: 365

participants:
  # Exactly one server. Clients reach it at host_names[0]; every name is in its certificate.
  - name: server1
    type: server
    org: example_org
    host_names: [localhost, 127.0.0.1]
    fl_port: 8002        # clients connect here (mutual TLS)
    admin_port: 8003     # admins connect here (mutual TLS)
    heartbeat_timeout: 30  # seconds without a heartbeat before a site counts as gone
    admin_session_timeout: 1800  # seconds an idle admin session stays logged in
    # Optional: several replicas of this server, one kit each (named after the replica), one
    # certificate each for this same server; sites and admins try them in this order. Ports
    # default to the server's. Without replicas the server's kit is named after the server.
    # replicas:
    #   - {name: server1-a, host: fl-a.example.org}
    #   - {name: server1-b, host: fl-b.example.org, fl_port: 8002, admin_port: 8003}
    store: sqlite        # the server's state; or {postgres: {dsn_file: local/postgres.dsn}} (the DSN in a 0600 file)
  # Sites (clients): they dial out to the server and need no open port.
  - name: site-1
    type: client
    org: example_org
  - name: site-2
    type: client
    org: example_org
  # Admins: the name is an e-mail address; role is one of
  # project_admin, org_admin, lead, member.
  - name: admin@example.org
    type: admin
    org: example_org
    role: project_admin

# Optional features.
features:
  he:
    enabled: false   # homomorphic encryption of model updates
"""
