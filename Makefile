# Two commands for a fresh machine (see README.md):
#   make repro   install into .venv, then run the whole pipeline (`dvc repro`) on the default params
#   make quick   install into .venv, then the whole comparison on the `quick` profile (about 12 min measured with install, an experiment)
#   make test    install into .venv, then run the test suite
# The raw data is read from a local mirror when one exists (XMKD_DATA_MIRROR, default ../shared/datasets).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(abspath $(VENV))/bin:$(PATH)
ifneq ($(wildcard ../shared/datasets),)
export XMKD_DATA_MIRROR ?= $(abspath ../shared/datasets)
endif

.PHONY: install init repro quick test

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

init: install
	@test -d .git || (git init -q && echo "initialised a git repository (DVC needs one)")
	@test -d .dvc || dvc init -q

repro: init
	dvc repro
	@echo "report: reports/results.md   |   browse runs: mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

quick: init
	$(PY) -m xmkd.profiles run quick
	@echo "report: reports/results.md (profile quick: params.yaml now holds its values; git checkout params.yaml to go back)"

test: install
	$(PY) -m pytest -q
