#!/usr/bin/env bash
# mpirun of the MPI that mpi4py uses (never whichever mpirun comes first on PATH), with the flags it
# needs to run as root and oversubscribe a small machine.
#   tools/mpirun.sh -n 4 python ...   launch;   --which: the launcher's path;   --describe: one line.
# When the ranks (times OMP_NUM_THREADS) outnumber the cores, ranks waiting for others sleep instead of
# spinning, so they leave the cores to the ranks still computing: MPICH's MPIR_CVAR_ENABLE_HEAVY_YIELD (Open
# MPI: mpi_yield_when_idle), and HPC_FCN_YIELD=1, with which hpc_fcn's Communicator waits asleep for every
# rank before each collective. HPC_FCN_YIELD=1|0 forces it on or off (bench/oversubscription.py: both).
# With yielding it also sets HPC_FCN_SLOTS=1, compute slots for the ensemble app: at most one rank per core runs a
# model step at once, the others sleep (hpc_fcn/parallel/slots.py; docs/speed.md); HPC_FCN_SLOTS=0 turns them off.
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
# the rank count: the value of the first -n/-np (a later one belongs to the program)
ranks=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    -n|-np|--np) ranks=${args[i + 1]:-}; break ;;
    -n=*|-np=*|--np=*) ranks=${args[i]#*=}; break ;;
  esac
done
yield=${HPC_FCN_YIELD:-auto}
case "$yield" in
  auto|0|1) ;;
  *) echo "error: HPC_FCN_YIELD=$yield: use auto (yield when the ranks outnumber the cores), 1 or 0" >&2; exit 2 ;;
esac
if [ "$yield" = auto ]; then
  # the cores this process may use (nproc would answer OMP_NUM_THREADS instead)
  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
  threads=${OMP_NUM_THREADS%%,*}
  case "$threads" in ''|*[!0-9]*) threads=1 ;; esac
  case "$ranks" in
    ''|*[!0-9]*) yield=0 ;;
    *) [ "$cores" -gt 0 ] && [ $((ranks * threads)) -gt "$cores" ] && yield=1 || yield=0 ;;
  esac
fi
# HPC_FCN_YIELD=1 also makes hpc_fcn's Communicator wait for the other ranks asleep before each collective
export HPC_FCN_YIELD=$yield
# compute slots come with yielding (what the user set wins): 8 ranks on 2 quiet cores step at 0.96x of 2 ranks
# with them, 0.87x yielding alone (bench/oversubscription.py, docs/speed.md)
slots=${HPC_FCN_SLOTS:-$yield}
case "$slots" in
  0|1) ;;
  *) echo "error: HPC_FCN_SLOTS=$slots: use 1 (compute slots where ranks outnumber cores) or 0" >&2; exit 2 ;;
esac
export HPC_FCN_SLOTS=$slots
if [ "$yield" = 1 ]; then
  if [ "$MPI_FAMILY" = openmpi ]; then
    extra+=(--mca mpi_yield_when_idle 1)
  else  # MPICH and its derivatives: a waiting rank nanosleeps in its progress loop (what the user set wins)
    export MPIR_CVAR_ENABLE_HEAVY_YIELD=${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}
  fi
fi
exec "$MPI_MPIRUN" "${extra[@]}" "$@"
