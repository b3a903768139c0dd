# recon-service — the two commands a fresh machine needs are `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench reliability lint openapi clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install everything (system libs via apt-get when root)

run: $(STAMP)  ## start the service on 127.0.0.1:9000 with its embedded defaults
	$(VENV)/bin/recon-service

test: $(STAMP)  ## the whole test suite (includes one real end-to-end reconstruction)
	$(PY) -m pytest

test-fast: $(STAMP)  ## everything but the real-pipeline end-to-end tests
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)  ## pipeline benchmark → bench/results.md and bench/results.json
	$(PY) -m bench.pipeline_bench

reliability: $(STAMP)  ## faults, hostile input and load → bench/reliability.md
	$(PY) -m bench.reliability

lint: $(STAMP)
	$(VENV)/bin/ruff check .

openapi: $(STAMP)  ## regenerate the committed openapi.json from the code
	$(PY) -m recon_service.openapi > openapi.json

clean:
	rm -rf $(VENV) .pytest_cache data
