# iris-mlflow-stack: everyday commands. `make help` lists them.
# POETRY: the Poetry to run (CI on the build machines passes their wrapper).
POETRY ?= poetry
COMPOSE ?= docker compose
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv requirements lint format test test-fast screenshots up down logs base-image bench clean team-up team-down user backup restore team-backup team-restore copy-to-team

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml poetry.lock
	$(POETRY) sync
	@touch $@

venv: $(VENV)/.installed ## Create or update .venv from poetry.lock (all groups)

requirements: ## Export the images' requirements files from poetry.lock
	$(POETRY) export --only main,notebook --format requirements.txt --output jupyter-notebook-docker/requirements.txt
	$(POETRY) export --only server --format requirements.txt --output mlflow-docker/requirements.txt
	$(POETRY) export --only serving --format requirements.txt --output model-server-docker/requirements.txt
	$(POETRY) export --only build --format requirements.txt --output jupyter-notebook-docker/requirements-build.txt

lint: venv ## ruff on code and notebook, PEP 8 on the notebook
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbqa pycodestyle src/iris_training.ipynb

format: venv ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: venv ## Run every test (Docker and browser tests need a Docker engine)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv ## Tests that need no Docker engine or browser
	$(PY) -m pytest -m "not docker and not browser" $(PYTEST_ARGS)

# The README's screenshots: docs/img/<name>.png is the browser test's tests/artifacts/browser/<n>-<name>.png
SCREENSHOTS := jupyterlab-after-run-all mlflow-metric-charts mlflow-registered-model

screenshots: venv ## Run the browser test against a fresh stack and refresh docs/img from its screenshots
	rm -rf tests/artifacts/browser
	IRIS_FAIL_ON_SKIP=1 $(PY) -m pytest -m browser -p no:cacheprovider $(PYTEST_ARGS)
	@for name in $(SCREENSHOTS); do \
		cp tests/artifacts/browser/*-$$name.png docs/img/$$name.png && echo "refreshed docs/img/$$name.png" || exit 1; \
	done

up: ## Build and start the stack (Jupyter :8888, MLflow :5000, model server :5001)
	$(COMPOSE) up --build -d

down: ## Stop the stack; the volumes (runs, models) are kept
	$(COMPOSE) down

logs: ## Follow the stack's logs (the Jupyter token is printed here)
	$(COMPOSE) logs -f

backup: ## Back up the running laptop stack into backups/<UTC timestamp>/
	scripts/backup-volumes.sh backup

restore: ## Restore the laptop stack: make restore DIR=backups/<timestamp> (backs up the current state first)
	@test -n "$(DIR)" || { echo "usage: make restore DIR=backups/<timestamp>"; exit 2; }
	scripts/backup-volumes.sh restore "$(DIR)"

base-image: ## Build a stand-in python:3.11 base image from Debian (no registry needed)
	scripts/build-base-image.sh

bench: venv ## Benchmarks into docs/benchmarks.md (5 runs each, BENCH_ARGS=--smoke for one); builds with --no-cache, leaves the engine's build cache alone
	$(PY) -m bench $(BENCH_ARGS)

clean: ## Remove caches and local run stores (not the Docker volumes)
	rm -rf .pytest_cache .ruff_cache mlflow.db mlruns src/mlflow.db
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

TEAM_COMPOSE := $(COMPOSE) -f docker-compose.yml -f docker-compose.team.yml

team-up: ## Build and start the team profile (sign-in, PostgreSQL, object store, 2 tracking servers); secrets from .env
	$(TEAM_COMPOSE) up --build --wait

team-down: ## Stop the team profile; its volumes (runs, models, users, backups) are kept
	$(TEAM_COMPOSE) down

user: ## Team profile: add a user or change one: make user NAME=alice PERMISSION=READ|EDIT|MANAGE (asks the password)
	@test -n "$(NAME)" || { echo "usage: make user NAME=<name> PERMISSION=READ|EDIT|MANAGE"; exit 2; }
	$(TEAM_COMPOSE) run --rm --no-deps users user "$(NAME)" "$(or $(PERMISSION),READ)"

team-backup: ## Team profile: back up both databases and the artifact bucket into backups/<UTC timestamp>/, while it runs
	scripts/backup-volumes.sh --team backup

team-restore: ## Team profile: make team-restore DIR=backups/<timestamp> (checks the backup, backs up the current state first)
	@test -n "$(DIR)" || { echo "usage: make team-restore DIR=backups/<timestamp>"; exit 2; }
	scripts/backup-volumes.sh --team restore "$(DIR)"

copy-to-team: ## Team profile: copy a laptop store into it: make copy-to-team [FROM=<laptop project> | FROM=<folder with mlflow.db>]
	scripts/copy-to-team.sh $(FROM)
