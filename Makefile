# recon-service — the two commands a fresh machine needs are `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run worker test test-fast bench bench-scale bench-deliverables bench-quality bench-real real-photos reliability lint openapi lock clean

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap.sh
	./scripts/bootstrap.sh
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install everything (system libs via apt-get when root)

run: $(STAMP)  ## start the service on 127.0.0.1:9000 with its embedded defaults
	$(VENV)/bin/recon-service

worker: $(STAMP)  ## a Celery worker host: runs jobs from RECON_BROKER_URL (see README, Scaling out)
	$(VENV)/bin/recon-worker

test: $(STAMP)  ## the whole test suite (includes one real end-to-end reconstruction)
	$(PY) -m pytest

test-fast: $(STAMP)  ## everything but the real-pipeline end-to-end tests
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)  ## pipeline benchmark, then the hard fixtures before/after → bench/results.md and bench/results.json
	$(PY) -m bench.pipeline_bench
	$(PY) -m bench.quality

bench-scale: $(STAMP)  ## throughput with 1, 2 and 4 Celery workers, preview-queue delay → bench/scale.md
	$(PY) -m bench.scale

bench-deliverables: $(STAMP)  ## bytes, triangles, texture and seconds of model.glb, model_mobile.glb, model.usdz → its section of bench/results.md
	$(PY) -m bench.deliverables

bench-quality: $(STAMP)  ## hard fixtures before/after: camera errors, F, wall flatness, PSNR/SSIM fit and held-out → its section of bench/results.md
	$(PY) -m bench.quality

real-photos: $(STAMP)  ## copy the public real photo sets under .cache/real/ (git clone from GitHub)
	$(PY) -m bench.real_photos prepare

bench-real: $(STAMP)  ## real photo sets (make real-photos first): registered, reprojection, PSNR/SSIM fit and held-out → its section of bench/results.md
	$(PY) -m bench.quality --real

reliability: $(STAMP)  ## faults, hostile input and load → bench/reliability.md
	$(PY) -m bench.reliability

lint: $(STAMP)
	$(VENV)/bin/ruff check .

openapi: $(STAMP)  ## regenerate the committed openapi.json from the code
	$(PY) -m recon_service.api.openapi > openapi.json

lock: $(STAMP)  ## re-resolve every dependency (all extras, Linux x86_64 and aarch64, Python 3.11+) into requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 --upgrade -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache data
