#!/usr/bin/env bash
# Download, check and unpack CIFAR-10 for the cifar10 jobs; arguments go to prepare_data.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
exec "$root/.venv/bin/python" "$here/prepare_data.py" "$@"
