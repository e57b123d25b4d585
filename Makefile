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

# two pytest workers (pytest-xdist); tests/conftest.py keeps each file on one worker and the
# browser and Ray tests one after another
test: install-test
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests

bench:
	$(PYTHON) bench/step_cost.py
	$(PYTHON) bench/sparsify_time.py
	$(PYTHON) bench/continual.py
	$(PYTHON) bench/landscape.py
