#!/usr/bin/env bash
# mpirun with the flags this MPI needs to run as root and oversubscribe a small machine.
# Prefers the venv's MPICH (installed from PyPI when the machine has none), else the system's.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$here/.venv}
if [ -x "$VENV/bin/mpirun" ]; then MPIRUN="$VENV/bin/mpirun"; else MPIRUN=$(command -v mpirun || true); fi
if [ -z "$MPIRUN" ]; then echo "error: no mpirun found: run 'make setup' or put your MPI on PATH" >&2; exit 127; fi
if [ "${1:-}" = "--which" ]; then echo "$MPIRUN"; exit 0; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
extra=()
if "$MPIRUN" --version 2>&1 | grep -qi "open mpi\|openrte"; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  extra+=(--oversubscribe)
fi
exec "$MPIRUN" "${extra[@]}" "$@"
