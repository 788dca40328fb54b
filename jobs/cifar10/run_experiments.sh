#!/usr/bin/env bash
# Run the CIFAR-10 FedAvg job without and with homomorphic encryption, one after the
# other, on a running federation, and print one results table.
#   jobs/cifar10/run_experiments.sh --startup_kit ADMIN_KIT [job.py options...]
# Defaults are the real-world setting (8 sites, 50 rounds, 4 local epochs, alpha 1.0);
# any job.py option (--num_rounds 2 --max_train 200 ...) is passed to both jobs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
ALPHA=1.0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--alpha" ] && ALPHA="${args[$((i + 1))]}"; done
OUT="$(mktemp -d "${TMPDIR:-/tmp}/fedsec-cifar10-XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

run() {  # run NAME JOB_PY: the job's output in $OUT/NAME.log, its wall time in $OUT/NAME.time
  local name="$1" job="$2" start end
  start=$(date +%s.%N)
  if ! "$PY" "$job" "${args[@]}" >"$OUT/$name.log" 2>&1; then
    cat "$OUT/$name.log" >&2
    echo "run_experiments: the $name job failed" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  "$PY" -c "print($end - $start)" >"$OUT/$name.time"
  tail -n 3 "$OUT/$name.log"
}
run plain "$ROOT/jobs/cifar10_fedavg/job.py"
run he "$ROOT/jobs/cifar10_fedavg_he/job.py"

"$PY" - "$OUT" "$ALPHA" "$ROOT" <<'PYEOF'
import re, sys
from pathlib import Path
out, alpha, root = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, str(root))
from fedsec.wire import arrays
print(f"\n{'config':<10} {'alpha':>6} {'final val acc':>14} {'runtime s':>10} {'bytes up/site/round':>20}")
for name in ("plain", "he"):
    log = (out / f"{name}.log").read_text()
    acc = re.search(r"^final global model: .*accuracy ([0-9.]+)", log, re.M)
    result = Path(re.search(r"^result downloaded to (.+)$", log, re.M).group(1))
    model = result / ("global_model.fsh" if name == "he" else "global_model.fsa")
    size = model.stat().st_size  # the plain model container, or the encrypted one (an upload has the same size)
    seconds = float((out / f"{name}.time").read_text())
    print(f"{name:<10} {alpha:>6} {acc.group(1) if acc else '?':>14} {seconds:>10.1f} {size:>20,}")
PYEOF
