# The two commands of the quick start: `make ensemble` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= 8
CONFIG ?= config/ens100.yaml
ARGS ?=

.PHONY: setup test test-serial test-mpi test-kernels ensemble data model bench clean

# MPI=system|pypi forces the machine's MPI or MPICH from PyPI (default: the machine's if it works).
MPI ?=

# The bootstrap returns at once when .venv is up to date (and, with MPI=..., of that kind).
setup:
	@MPI=$(MPI) bash tools/bootstrap.sh $(VENV)

test: setup
	@VENV=$(VENV) tools/mpirun.sh --describe
	@$(MAKE) --no-print-directory test-serial test-mpi test-kernels

test-serial: setup
	$(PY) -m pytest -q -rs -p no:cacheprovider tests --ignore=tests/mpi

test-mpi: setup
	VENV=$(VENV) PY=$(PY) tools/mpitest.sh 4
	VENV=$(VENV) PY=$(PY) tools/mpitest.sh 3 -m odd_ranks

# The MPI suite (layout equivalence, training steps) again on other CPU kernels: ATen's scalar code, MKL's
# SSE4.2 and oneDNN's SSE4.1 paths. A tolerance that holds only on this machine's kernels fails here, not on
# a user's machine. KERNELS='ATEN_CPU_CAPABILITY=avx2 ...' picks others.
KERNELS ?= ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
test-kernels: setup
	env $(KERNELS) VENV=$(VENV) PY=$(PY) tools/mpitest.sh 4

ensemble: setup
	@VENV=$(VENV) tools/mpirun.sh --describe
	VENV=$(VENV) tools/mpirun.sh -n $(NP) $(PY) -m hpc_fcn.ensemble $(CONFIG) $(ARGS)

data: setup
	$(PY) -m hpc_fcn.data.synth --builtin

clean:
	rm -rf build *.egg-info .pytest_cache
