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
E2E_FLAGS := $(if $(HEADED),--headed --slowmo $(or $(SLOWMO),250),) $(if $(TARGET),--target $(TARGET),)

.PHONY: bootstrap test e2e prove lint typecheck bench stack-up stack-down clean doctor

bootstrap:
	@bash scripts/bootstrap.sh
	@if [ -n "$(TARGET)" ] && [ -x "targets/$(subst -,_,$(TARGET))/bootstrap.sh" ]; then bash "targets/$(subst -,_,$(TARGET))/bootstrap.sh"; fi

test: bootstrap lint
	@mkdir -p $(REPORTS)
	$(PYTEST) tests journeys --junitxml=$(REPORTS)/junit-test.xml $(PYTEST_ARGS)

e2e: bootstrap
	@mkdir -p $(REPORTS)
	$(PYTEST) $(JOURNEYS) $(E2E_FLAGS) --html=$(REPORTS)/report.html --self-contained-html \
		--junitxml=$(REPORTS)/junit.xml $(PYTEST_ARGS)

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

doctor: bootstrap
	.venv/bin/throughline doctor

stack-up: bootstrap
	.venv/bin/throughline stack up --detach

stack-down:
	.venv/bin/throughline stack down

clean:
	rm -rf $(REPORTS) .throughline .pytest_cache
