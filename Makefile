# The two commands of the quick start: `make ensemble` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpc_fcn-setup
NP ?= 8
CONFIG ?= config/ens100.yaml
ARGS ?=

.PHONY: setup test test-serial test-mpi ensemble data model bench clean

setup: $(STAMP)

$(STAMP): setup.cfg tools/bootstrap.sh
	@bash tools/bootstrap.sh $(VENV)

test: setup
	@$(MAKE) --no-print-directory test-serial test-mpi

test-serial: setup
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/mpi

test-mpi: setup
	PY=$(PY) tools/mpitest.sh 4
	PY=$(PY) tools/mpitest.sh 3 -m odd_ranks

ensemble: setup
	tools/mpirun.sh -n $(NP) $(PY) -m hpc_fcn.ensemble $(CONFIG) $(ARGS)

data: setup
	$(PY) -m hpc_fcn.data.synth --builtin

clean:
	rm -rf build *.egg-info .pytest_cache
