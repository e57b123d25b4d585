# The two set-up commands of the README:
#   make app    installs what the app needs and starts it on the embedded digits data
#   make test   installs what the tests need (pip + Debian packages) and runs them
PYTHON ?= python3
PORT ?= 8501
# the interface the app listens on: loopback by default; ADDRESS=0.0.0.0 serves the network
ADDRESS ?= 127.0.0.1

.PHONY: app test install install-test system-packages bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt

system-packages:
	@if [ "$$(id -u)" = "0" ]; then \
	  apt-get update -q && apt-get install -y -q chromium chromium-driver dataset-fashion-mnist; \
	else \
	  sudo apt-get update -q && sudo apt-get install -y -q chromium chromium-driver dataset-fashion-mnist; \
	fi

install-test: install system-packages
	$(PYTHON) -m pip install -q -r requirements-test.txt

app: install
	$(PYTHON) -m streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --server.headless true

# In two parts: every test but the browser and Ray ones on two pytest-xdist workers (a file's
# tests on one worker, its module fixtures built once; the tests hold torch to one thread, so
# one process leaves a core idle), then the browser and Ray tests in one process on an
# otherwise idle machine (next to a busy worker, a slow rerun left elements it had moved at
# their old places long enough for Playwright's strict locators to find two). Both parts run;
# either failing fails the target.
SERIAL_TESTS = $(wildcard tests/test_browser*.py) tests/test_sweep.py
test: install-test
	@rc=0; \
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(addprefix --ignore=,$(SERIAL_TESTS)) tests || rc=$$?; \
	$(PYTHON) -m pytest -q -p no:cacheprovider $(SERIAL_TESTS) || rc=$$?; \
	exit $$rc

bench:
	$(PYTHON) bench/step_cost.py
	$(PYTHON) bench/sparsify_time.py
	$(PYTHON) bench/continual.py
	$(PYTHON) bench/landscape.py
