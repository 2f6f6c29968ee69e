# medhub: the two commands of README.md, and what they need.
#   make demo   install, then start the demo hub on http://127.0.0.1:8000/
#   make test   install (with Chromium for the browser test), then run the tests

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medhub-installed

.PHONY: demo test install chromium clean

demo: install
	$(BIN)/medhub demo $(ARGS)

test: install chromium
	$(BIN)/python -m pytest $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml package.json package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# The browser test drives Debian's Chromium (Playwright cannot download its own here).
chromium:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) node_modules state
