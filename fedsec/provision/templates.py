"""Text the provisioner writes: start/stop scripts, default policies, the sample project.

Pure data: no logic beyond string formatting.
"""

from __future__ import annotations

START_SH = """#!/usr/bin/env bash
# Start {kind} {name} of fedsec project {project} from this kit.
#   start.sh               run in the background: log in ../log.txt, pid in ../daemon.pid
#   start.sh --foreground  run in this terminal
# The fedsec command is taken from $FEDSEC, else from PATH.
set -euo pipefail
KIT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"
FEDSEC="${{FEDSEC:-fedsec}}"
if [ "${{1:-}}" = "--foreground" ]; then
  exec "$FEDSEC" {kind} --kit "$KIT"
fi
if [ -f "$KIT/daemon.pid" ] && kill -0 "$(cat "$KIT/daemon.pid")" 2>/dev/null; then
  echo "{name} is already running (pid $(cat "$KIT/daemon.pid"))" >&2
  exit 1
fi
nohup "$FEDSEC" {kind} --kit "$KIT" >>"$KIT/log.txt" 2>&1 </dev/null &
echo $! >"$KIT/daemon.pid"
echo "started {name} (pid $!), log: $KIT/log.txt"
"""

STOP_SH = """#!/usr/bin/env bash
# Stop {kind} {name} started by start.sh: TERM its recorded pid, KILL after 10 s.
set -euo pipefail
KIT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"
PIDFILE="$KIT/daemon.pid"
if [ ! -f "$PIDFILE" ]; then
  echo "{name} is not running (no $PIDFILE)" >&2
  exit 0
fi
PID="$(cat "$PIDFILE")"
if kill -TERM "$PID" 2>/dev/null; then
  for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && kill -KILL "$PID" 2>/dev/null || true
  echo "stopped {name} (pid $PID)"
else
  echo "{name} was not running (stale pid $PID)" >&2
fi
rm -f "$PIDFILE"
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
