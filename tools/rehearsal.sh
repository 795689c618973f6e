#!/usr/bin/env bash
# Production dress rehearsal at 0.25 degrees on this machine: bash tools/rehearsal.sh [--workdir DIR] [--only STAGE...]
# Writes CDS-style inputs at 721 x 1440, converts them under mpirun, runs the ensemble app on the production
# config with a released-layout checkpoint on 4 and 2 ranks, kills and resumes across layouts, measures every
# phase against the performance model, and prints one table (docs/rehearsal.md). Sets up .venv when missing.
# Exit status: 0 when every check passes, 1 when one fails (--strict: or a prediction misses its goal), 2 for bad
# arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  make setup VENV="$VENV"
fi
# The bench and the runs set their own threads per rank; a limit the caller exported is left as it is.
exec timeout --signal=TERM --kill-after=30 "${HPC_FCN_REHEARSAL_TIMEOUT:-3600}" "$VENV/bin/python" tools/rehearsal.py "$@"
