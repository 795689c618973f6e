#!/usr/bin/env bash
# mpirun of the MPI that mpi4py uses (never whichever mpirun comes first on PATH), with the flags it
# needs to run as root and oversubscribe a small machine.
#   tools/mpirun.sh -n 4 python ...   launch;   --which: the launcher's path;   --describe: one line.
# The launcher comes from the record tools/bootstrap.sh writes ($VENV/.hpc_fcn-mpi, valid while newer
# than the installed mpi4py), else from asking mpi4py (tools/mpi_choice.py locate); HPC_FCN_MPIRUN
# (with HPC_FCN_MPI_FAMILY=openmpi|mpich) forces one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$here/.venv}
PY=${PY:-$VENV/bin/python}
# relative VENV and PY (as make passes them) name paths in the checkout, wherever the caller runs
case "$VENV" in /*) ;; *) VENV=$here/$VENV ;; esac
case "$PY" in /*) ;; */*) PY=$here/$PY ;; esac
record=$VENV/.hpc_fcn-mpi
if [ -n "${HPC_FCN_MPIRUN:-}" ]; then
  MPI_MPIRUN=$HPC_FCN_MPIRUN MPI_FAMILY=${HPC_FCN_MPI_FAMILY:-unknown} MPI_LABEL="$HPC_FCN_MPIRUN (HPC_FCN_MPIRUN)"
elif [ -f "$record" ] && . "$record" && [ -f "${MPI_MPI4PY:-}" ] && [ "$record" -nt "$MPI_MPI4PY" ]; then
  :
elif [ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1; then
  eval "$("$PY" "$here/tools/mpi_choice.py" locate --python "$PY")" || exit 127
else
  echo "error: no Python with mpi4py at $PY: run 'make setup', or set PY to your Python" >&2; exit 127
fi
case "${1:-}" in
  --which) echo "$MPI_MPIRUN"; exit 0 ;;
  --describe) echo "[mpi] $MPI_LABEL (${MPI_MPIRUN#"$here"/})"; exit 0 ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
extra=()
if [ "$MPI_FAMILY" = openmpi ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  extra+=(--oversubscribe)
fi
exec "$MPI_MPIRUN" "${extra[@]}" "$@"
