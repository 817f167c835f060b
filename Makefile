# One entry point for the README's commands. VENV can point elsewhere: make test VENV=/tmp/venv
VENV ?= .venv
PYTHON ?= python3
# The Codex CLI the end-to-end tests drive (installed locally when npm is there).
CODEX_VERSION ?= 0.169.0
CODEX_DIR = .cache/codex

.PHONY: serve test bench install dev codex browser clean

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

codex:
	@if [ ! -x $(CODEX_DIR)/node_modules/.bin/codex ] && command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix $(CODEX_DIR) @openai/codex@$(CODEX_VERSION) \
	  || echo "could not install the Codex CLI: its live tests will be skipped"; fi

# The browser the status page's end-to-end test drives: Debian's Chromium and its chromedriver,
# installed when missing and apt-get is there (as root). Without them that test skips, or fails
# under CI=true.
browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "could not install Chromium: the status page's browser test will be skipped (failed under CI=true)"; fi

test: dev codex browser
	PATH="$(CURDIR)/$(CODEX_DIR)/node_modules/.bin:$$PATH" $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile

bench: dev
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) $(CODEX_DIR)
