#!/usr/bin/env bash
# Create (or update) the virtualenv that `make test` and `make ensemble` use. Idempotent: when the
# venv is newer than setup.cfg and this script it returns at once.
#  - PyTorch: reuses the interpreter's torch if it has one, else installs torch==2.13.0 (CPU build
#    where the local wheel store has it). A constraints file stops any dependency from upgrading it.
#  - MPI (tools/mpi_choice.py decides by trying): an mpi4py already there is kept if it runs a 2-rank
#    hello under its own mpirun; else the machine's MPI if its mpicc compiles, links and runs a 2-rank
#    test program (mpi4py is then built against it); else MPICH from PyPI. MPI=system|pypi forces one
#    (MPI=system fails rather than falling back). The choice is recorded in $VENV/.hpc_fcn-mpi for
#    tools/mpirun.sh.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TH_VERSION=${TORCH_HARMONICS_VERSION:-0.9.3}
MPI_MODE=${MPI:-auto}
stamp="$VENV/.hpc_fcn-setup"
record="$VENV/.hpc_fcn-mpi"
case "$MPI_MODE" in
  auto|system|pypi) ;;
  *) echo "error: MPI=$MPI_MODE is not a choice: use MPI=system, MPI=pypi or leave MPI unset" >&2; exit 2 ;;
esac
if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ] && [ "$stamp" -nt tools/bootstrap.sh ] \
   && [ "$stamp" -nt tools/mpi_choice.py ] \
   && { [ "$MPI_MODE" = auto ] || grep -qx "MPI_SOURCE=$MPI_MODE" "$record" 2>/dev/null; }; then
  exit 0
fi
say() { echo "[setup] $*"; }
venv_flags=()
if "$PYTHON" -c "import torch" 2>/dev/null; then
  TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
  venv_flags+=(--system-site-packages)
  say "using the interpreter's torch $TORCH_VERSION"
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "${venv_flags[@]}" "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION"
  "${PIP[@]}" install "torch==$TORCH_VERSION" numpy
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"
export PIP_CONSTRAINT="$PWD/$VENV/constraints.txt"

# --- MPI -------------------------------------------------------------------------------------------
probe() {  # probe MODE [--write FILE]: mpi4py imports and runs a 2-rank hello under its own mpirun
  "$VENV/bin/python" tools/mpi_choice.py probe --python "$VENV/bin/python" --require "$@" >/dev/null
}
install_pypi() {
  "${PIP[@]}" install --force-reinstall --no-deps --only-binary mpi4py mpi4py mpich
}
install_system() {  # built from source against this mpicc; not from pip's cache (it may hold another MPI's build)
  "${PIP[@]}" uninstall -y mpich >/dev/null 2>&1 || true
  MPICC="$1" "${PIP[@]}" install --force-reinstall --no-deps --no-cache-dir --no-binary mpi4py mpi4py
}
rm -f "$record"
kept=""
if "$VENV/bin/python" -c "import mpi4py" 2>/dev/null; then
  if why=$(probe "$MPI_MODE" 2>&1); then
    kept=1
    say "mpi: the installed mpi4py runs a 2-rank hello under its own mpirun: keeping it"
  else
    say "mpi: the installed mpi4py is not usable (${why#error: }): choosing again"
  fi
fi
if [ -z "$kept" ]; then
  decision=$("$PYTHON" tools/mpi_choice.py decide --mode "$MPI_MODE" --venv "$VENV") || exit 1
  eval "$decision"
  say "mpi: $MPI_REASON"
  if [ "$MPI_CHOICE" = system ]; then
    say "building mpi4py against $MPI_MPICC (a few minutes of compiling)"
    if install_system "$MPI_MPICC" && probe system; then
      :
    elif [ "$MPI_MODE" = system ]; then
      echo "error: MPI=system but mpi4py does not build or run against $MPI_MPICC (see above): fix that MPI, or use MPI=pypi" >&2
      exit 1
    else
      say "mpi: mpi4py does not build or run against $MPI_MPICC (see above): using MPICH from PyPI instead"
      MPI_CHOICE=pypi
    fi
  fi
  if [ "$MPI_CHOICE" = pypi ]; then
    say "installing mpi4py and MPICH from PyPI into $VENV"
    install_pypi
    probe pypi || { echo "error: mpi4py with MPICH from PyPI does not run a 2-rank hello (see above)" >&2; exit 1; }
  fi
fi

say "installing hpc_fcn and its dependencies"
"${PIP[@]}" install -e ".[test]"
# torch-harmonics pins a newer torch in its metadata; it works with ours, so skip its dependencies.
"${PIP[@]}" install --no-deps "torch-harmonics==$TH_VERSION"
"$VENV/bin/python" -c "import torch, torch_harmonics, mpi4py.MPI, h5py, netCDF4, cf_units, cftime, compliance_checker, hpc_fcn" \
  || { echo "[setup] the environment in $VENV does not import; see the messages above" >&2; exit 1; }
probe "$MPI_MODE" --write "$record" || { echo "error: the MPI set-up above does not launch mpi4py" >&2; exit 1; }
touch "$stamp"
mpi=$(VENV=$VENV tools/mpirun.sh --describe)
say "ready: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'), MPI: ${mpi#"[mpi] "}"
