# The two commands of the quick start: `make ensemble` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= 8
CONFIG ?= config/ens100.yaml
ARGS ?=

.PHONY: setup test test-serial test-mpi ensemble data model bench clean

# MPI=system|pypi forces the machine's MPI or MPICH from PyPI (default: the machine's if it works).
MPI ?=

# The bootstrap returns at once when .venv is up to date (and, with MPI=..., of that kind).
setup:
	@MPI=$(MPI) bash tools/bootstrap.sh $(VENV)

test: setup
	@VENV=$(VENV) tools/mpirun.sh --describe
	@$(MAKE) --no-print-directory test-serial test-mpi

test-serial: setup
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/mpi

test-mpi: setup
	VENV=$(VENV) PY=$(PY) tools/mpitest.sh 4
	VENV=$(VENV) PY=$(PY) tools/mpitest.sh 3 -m odd_ranks

ensemble: setup
	@VENV=$(VENV) tools/mpirun.sh --describe
	VENV=$(VENV) tools/mpirun.sh -n $(NP) $(PY) -m hpc_fcn.ensemble $(CONFIG) $(ARGS)

data: setup
	$(PY) -m hpc_fcn.data.synth --builtin

clean:
	rm -rf build *.egg-info .pytest_cache
