# One entry point for the README's commands. VENV can point elsewhere: make test VENV=/tmp/venv
VENV ?= .venv
PYTHON ?= python3

.PHONY: serve test bench install dev clean

# Runtime only: what `make serve` needs.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

# Runtime plus test tools.
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

serve: install
	$(VENV)/bin/gunicorn -c etc/gunicorn.conf.py wsgi:app

test: dev
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: dev
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV)
