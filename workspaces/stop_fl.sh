#!/usr/bin/env bash
# Stop the processes ./start_fl.sh started, by the pids their kits recorded (clients first).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIST="$HERE/.started_kits"
if [ ! -s "$LIST" ]; then echo "nothing to stop (no $LIST)"; exit 0; fi
mapfile -t kits < <(tac "$LIST")
for kit in "${kits[@]}"; do
  [ -x "$kit/startup/stop_fl.sh" ] && "$kit/startup/stop_fl.sh" || true
done
rm -f "$LIST"
