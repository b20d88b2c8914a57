# Two commands matter: `make e2e` (the journeys, headless, with the HTML report and
# traces) and `make test` (the framework's own tests plus the journeys). Both bootstrap.
# `make e2e TARGET=<name>` runs the journeys against another target (targets/<name>).
# `make prove` shows which journey catches each defect drill of the target (docs/prove.md).
PY      := .venv/bin/python
PYTEST  := $(PY) -m pytest
REPORTS := reports
HEADED  ?=
TARGET  ?=
JOURNEYS ?= journeys
PYTEST_ARGS ?=
COVERAGE ?=
E2E_FLAGS := $(if $(HEADED),--headed --slowmo $(or $(SLOWMO),250),) $(if $(TARGET),--target $(TARGET),) \
	$(if $(filter-out 0,$(COVERAGE)),--platform-coverage,)
# HEADED=1 without a display: under xvfb-run when it is installed (apt-get install xvfb); else
# the harness says in one line that no display was found.
XVFB := $(if $(HEADED),$(if $(or $(DISPLAY),$(WAYLAND_DISPLAY)),,$(shell command -v xvfb-run 2>/dev/null)),)
XVFB_RUN := $(if $(XVFB),$(XVFB) -a,)

.PHONY: bootstrap test e2e durations prove lint typecheck bench soak stack-up stack-down clean doctor

bootstrap:
	@bash scripts/bootstrap.sh
	@if [ -n "$(TARGET)" ] && [ -x "targets/$(subst -,_,$(TARGET))/bootstrap.sh" ]; then bash "targets/$(subst -,_,$(TARGET))/bootstrap.sh"; fi

# Two workers by default (TEST_WORKERS=1: serial); a test file stays on one worker (--dist
# loadfile), so its module fixtures start once.
TEST_WORKERS ?= 2
test: bootstrap lint
	@mkdir -p $(REPORTS)
	$(PYTEST) tests journeys --junitxml=$(REPORTS)/junit-test.xml \
		$(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,) $(PYTEST_ARGS)

# Each run writes under $(REPORTS)/runs/<id>/ (report.html, junit.xml, results.json, artifacts/);
# $(REPORTS)/latest points at the newest. WORKERS=N runs N workers, each with its own stack;
# SHARD=i/n runs one shard of n, balanced by targets/<name>/durations.json (docs/parallel.md).
# COVERAGE=1 runs the platform's Python services under coverage.py (docs/platform-coverage.md).
e2e: bootstrap
	@mkdir -p $(REPORTS)
	$(XVFB_RUN) $(PY) -m harness.cli run $(JOURNEYS) --reports $(REPORTS) $(E2E_FLAGS) \
		$(if $(WORKERS),--workers $(WORKERS),) $(if $(SHARD),--shard $(SHARD),) $(PYTEST_ARGS)

# Record the journeys' durations for SHARD= (one serial run, then its results).
durations: bootstrap
	@mkdir -p $(REPORTS)
	$(XVFB_RUN) $(PY) -m harness.cli run $(JOURNEYS) --reports $(REPORTS)/durations $(E2E_FLAGS) $(PYTEST_ARGS)
	$(PY) -m harness.cli durations $(REPORTS)/durations/latest $(if $(TARGET),--target $(TARGET),)

# Break the platform on purpose, drill by drill (targets/<name>/drills.toml; docs/prove.md).
prove: bootstrap
	@mkdir -p $(REPORTS)
	$(PY) -m harness.cli prove $(if $(TARGET),--target $(TARGET),) --report $(REPORTS)/prove.html $(PROVE_ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: bootstrap
	$(PY) scripts/bench_start.py --only infra
	$(PY) scripts/bench_start.py --only all
	$(PY) scripts/bench_chat.py
	$(PY) scripts/bench_journeys.py --runs 3

# 50 users chat for 2 minutes through the real socket: p50/p95, errors, lost messages, exact usage.
soak: bootstrap
	$(PY) scripts/bench_chat.py --soak 120 --soak-users 50

doctor: bootstrap
	.venv/bin/throughline doctor

stack-up: bootstrap
	.venv/bin/throughline stack up --detach

stack-down:
	.venv/bin/throughline stack down

clean:
	rm -rf $(REPORTS) .throughline .pytest_cache
