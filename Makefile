# medhub: the two commands of README.md, and what they need.
#   make demo   install, then start the demo hub on http://127.0.0.1:8000/
#   make test   install (with Chromium for the browser test), then run the tests

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medhub-installed

.PHONY: demo test install system-packages docker-engine clean

demo: install
	$(BIN)/medhub demo $(ARGS)

test: install system-packages docker-engine
	$(BIN)/python -m pytest $(ARGS)

install: $(STAMP)

LAB    := extensions/medhub-lab
$(STAMP): pyproject.toml package.json package-lock.json $(LAB)/package.json $(LAB)/tsconfig.json $(wildcard $(LAB)/src/*.ts) $(LAB)/style/index.css
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"  # the CPU wheel on disk, before anything asks for torch
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# an editable install skips pyproject's data-files: the kernelspec, the server's settings, JupyterLab's
	$(BIN)/jupyter kernelspec install --sys-prefix --name medlib kernels/medlib >/dev/null
	install -D -m 644 extensions/jupyter-config/medhub_jupyter.json $(VENV)/etc/jupyter/jupyter_server_config.d/medhub_jupyter.json
	install -D -m 644 extensions/jupyter-config/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	npm ci --no-audit --no-fund --loglevel=error
	# JupyterLab's medhub panel, built with @jupyterlab/builder into the server extension's package
	PATH="$(abspath $(BIN)):$$PATH" npm run build --silent --workspace=$(LAB) >/dev/null
	rm -rf $(VENV)/share/jupyter/labextensions/medhub-lab
	cp -r extensions/medhub_jupyter/labextension $(VENV)/share/jupyter/labextensions/medhub-lab
	touch $(STAMP)

# Debian packages the tests use: Chromium for the browser tests (Playwright cannot download
# its own here), dicom3tools' dciodvfy to validate anonymized files, Orthanc (with DICOMweb) as
# the PACS the edge node harvests from, Tesseract to find burned-in text.
system-packages:
	@command -v chromium >/dev/null && command -v dciodvfy >/dev/null && [ -x /usr/sbin/Orthanc ] \
	  && [ -f /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ] \
	  && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium dicom3tools orthanc orthanc-dicomweb \
	  tesseract-ocr tesseract-ocr-eng >/dev/null; }

# A Docker engine and the notebook and hub images for tests/test_containers.py (../shared/DOCKER.md's
# recipe: no registry). If no engine can start, the container tests skip and say why.
docker-engine: install
	-images/test-engine.sh $(BIN)/python

clean:
	rm -rf $(VENV) node_modules state build
