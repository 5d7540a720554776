# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# Rebuilt whenever the lock files change.
$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.lock
	# --no-deps: these two pin torch<2.3 / numpy<2 / GUI opencv in their metadata (see the file)
	$(VPY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(VPY) jobs/finetune.py

test: setup
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q -ra

lint: setup
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: setup
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

bench: setup
	$(VPY) bench/render_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
