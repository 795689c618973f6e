#!/usr/bin/env bash
# Run the MPI tests on N ranks with a wall-clock limit: tools/mpitest.sh N [pytest args...]
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=$1; shift
limit=${HPC_FCN_MPI_TEST_TIMEOUT:-900}
PY=${PY:-$here/.venv/bin/python}
echo "== MPI tests on $n ranks (limit ${limit}s)"
timeout --signal=TERM --kill-after=10 "$limit" "$here/tools/mpirun.sh" -n "$n" \
  "$PY" -m pytest "$here/tests/mpi" --with-mpi -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "error: MPI tests on $n ranks exceeded ${limit}s" >&2; fi
case " $* " in *" -m "*) if [ $rc -eq 5 ]; then rc=0; fi ;; esac  # a marker run may select no tests at this size
exit $rc
