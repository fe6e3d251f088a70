# Herald — the two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.herald-installed

.PHONY: install run demo test test-fast lint format bench load clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,load]"
	# The Open Bandit Dataset's files only (its code needs torch and Python < 3.11): what
	# the off-policy estimator check (tests/unit/test_off_policy_obd.py, bench) reads.
	$(BIN)/python -m pip install --quiet --no-deps "obp==0.4.1"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Herald with test and load-test extras

run: install  ## local cluster: Redis, emulators, Ray, Serve on :8000, demo users
	$(BIN)/herald run

demo: install  ## scripted scenario against the running stack (or one it starts)
	$(BIN)/herald demo

test: install  ## the whole suite, fault tests included; then the log-sensitive tests on Kafka and on a 3-master Redis Cluster
	$(BIN)/python -m pytest -q -rs --durations=25
	HERALD_TEST_EVENT_LOG=kafka $(BIN)/python -m pytest -q -rs -m eventlog
	HERALD_TEST_REDIS=cluster $(BIN)/python -m pytest -q -rs -m eventlog

test-fast: install  ## everything but fault and slow tests
	$(BIN)/python -m pytest -q -m "not fault and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## transactional benchmark (writes bench/results/transactional.json)
	$(BIN)/python bench/transactional.py

load: install  ## 60 s of locust against the running stack (`make run`); CSV in bench/results/
	$(BIN)/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless \
		-u 20 -r 5 -t 60s --csv bench/results/load --only-summary

clean:
	rm -rf .herald .pytest_cache
