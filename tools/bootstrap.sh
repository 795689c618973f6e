#!/usr/bin/env bash
# Create (or update) the virtualenv that `make test` and `make ensemble` use. Idempotent: when the
# venv is newer than setup.cfg and this script it returns at once.
#  - PyTorch: reuses the interpreter's torch if it has one, else installs torch==2.13.0 (CPU build
#    where the local wheel store has it). A constraints file stops any dependency from upgrading it.
#  - MPI: uses the machine's mpirun/mpicc if there is one, else the MPICH runtime from PyPI.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TH_VERSION=${TORCH_HARMONICS_VERSION:-0.9.3}
stamp="$VENV/.hpc_fcn-setup"
if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ] && [ "$stamp" -nt tools/bootstrap.sh ]; then
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
mpi_pkgs=(mpi4py)
if [ ! -x "$VENV/bin/mpirun" ] && ! command -v mpicc >/dev/null 2>&1 && ! command -v mpirun >/dev/null 2>&1; then
  say "no MPI on this machine: installing MPICH from PyPI into $VENV"
  mpi_pkgs+=(mpich)
elif command -v mpicc >/dev/null 2>&1 && [ ! -x "$VENV/bin/mpirun" ]; then
  say "building mpi4py against the machine's MPI ($(command -v mpicc))"
  "${PIP[@]}" install --no-binary mpi4py mpi4py
  mpi_pkgs=()
fi
say "installing hpc_fcn and its dependencies"
"${PIP[@]}" install "${mpi_pkgs[@]}" -e ".[test]"
# torch-harmonics pins a newer torch in its metadata; it works with ours, so skip its dependencies.
"${PIP[@]}" install --no-deps "torch-harmonics==$TH_VERSION"
"$VENV/bin/python" -c "import torch, torch_harmonics, mpi4py.MPI, h5py, netCDF4, hpc_fcn" \
  || { echo "[setup] the environment in $VENV does not import; see the messages above" >&2; exit 1; }
touch "$stamp"
say "ready: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'), mpirun: $(tools/mpirun.sh --which)"
