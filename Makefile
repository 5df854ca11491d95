# Front doors: make demo | make test | make bench | make lab
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python

.PHONY: demo test bench lab venv clean

$(VPY): setup.cfg pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(VPY)

venv: $(VPY)

demo: $(VPY)
	$(VPY) samples/demo.py

# lint (ruff), types (mypy), then the tests
test: $(VPY)
	$(VPY) -m ruff check .
	$(VPY) -m mypy
	$(VPY) -m pytest

bench: $(VPY)
	$(VPY) bench/run.py $(ARGS)

# the user-mode-linux DMVPN lab (root); FLAVOUR=debian12|debian13 (default: both, side by
# side), AUTH=cert|psk (default: both, cert first), REPEAT=N runs it N times per flavour,
# SERIAL=1 one flavour after the other
lab:
	bash lab/run-lab.sh $(if $(FLAVOUR),--flavour $(FLAVOUR)) $(if $(AUTH),--auth $(AUTH)) \
	  $(if $(REPEAT),--repeat $(REPEAT)) $(if $(SERIAL),--serial)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
