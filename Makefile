# `make test` is the one test command (CI runs it too): it makes .venv, installs
# the project with its test extras, and runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned in requirements-torch.txt (the builds this workplace keeps on disk); override to taste.
TORCH_PINS ?= -r requirements-torch.txt
EXTRAS ?= test,lint,docs,hf,ray
PYTEST_ARGS ?=

# `make serve PHOTOS=dir`: index a folder once (kept in INDEX), then serve it.
PHOTOS ?= ../shared/data/coco-mini/images
INDEX ?= .xmodal/index
MODEL ?= coca_ViT-B-32:laion2b_s13b_b90k
CAPTIONS ?=

.PHONY: install test test-fast demo serve lint docs bench-index bench-world clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile requirements-torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Under a minute: unit tests, no real processes, nothing marked slow.
test-fast: install
	$(BIN)/python -m pytest -m 'not e2e and not slow' -q $(PYTEST_ARGS)

# `make demo`: offline. Trains the small model on the generated world (cached under
# ~/.cache/xmodal, or XMODAL_DEMO_DIR), indexes unseen scenes, serves on 127.0.0.1:8000.
demo: install
	$(BIN)/xmodal demo

serve: install
	test -f $(INDEX)/CURRENT || $(BIN)/xmodal index $(PHOTOS) --out $(INDEX) --model $(MODEL) $(if $(CAPTIONS),--captions $(CAPTIONS))
	$(BIN)/xmodal serve --index $(INDEX)

# mypy reads the installed layout (xmodal.app is app/, ...) through links in build/typecheck.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/typecheck/xmodal && for n in app indexer models; do ln -sfn ../../../$$n build/typecheck/xmodal/$$n; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p xmodal
	$(BIN)/hadolint Dockerfile
	docker-compose -f docker-compose.yml -f docker/docker-compose.gpu.yml config --quiet
	docker-compose -f docker-compose.yml -f docker/docker-compose.gpu.yml --profile ray --profile replicas config --quiet

docs: install
	$(BIN)/python -m mkdocs build --strict --site-dir build/site

bench-index: install
	$(BIN)/python bench/bench_index.py

bench-world: install
	$(BIN)/python bench/bench_world.py --threads 1

clean:
	rm -rf $(VENV) .pytest_cache build
