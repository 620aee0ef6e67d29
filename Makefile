# `make demo` and `make test` set everything up on a fresh machine (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.meddl-installed

.PHONY: demo test lint benchmark benchmark-classification benchmark-training benchmark-enhancement benchmark-registration benchmark-nnunet benchmark-editor-fill benchmark-batch benchmark-server benchmark-interactive clean

$(STAMP): pyproject.toml constraints.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that nothing later pulls a CUDA build
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -r requirements-dev.txt
	# deepbet without its GUI dependencies: MedDL only needs its weights and reference pipeline
	$(PIP) install -c constraints.txt --no-deps deepbet
	# nnU-Net v2 without timm/torchvision (dynamic_network_architectures requires timm, whose torchvision
	# wheel does not match the CPU torch build; nnU-Net's U-Nets need neither): its real dependencies are in
	# requirements-dev.txt
	$(PIP) install -c constraints.txt --no-deps nnunetv2 dynamic_network_architectures
	# nnInteractive's promptable session (the `interactive` extra) without its server stack and
	# huggingface_hub: MedDL loads model folders itself; its other dependencies come with nnU-Net
	$(PIP) install -c constraints.txt --no-deps nninteractive nninteractive-client
	# SAM 2's video predictor (the `sam2` extra) without torchvision (MedDL gives it in-memory frames) and without
	# its CUDA extension; a source package, built against the installed torch
	SAM2_BUILD_CUDA=0 $(PIP) install -c constraints.txt --no-deps --no-build-isolation sam2 hydra-core iopath omegaconf \
		antlr4-python3-runtime portalocker pyyaml
	$(PIP) install --no-deps --no-build-isolation -e .
	# the unrelated PyPI package `slicer` would shadow slicer-core's `slicer`
	! $(PY) -m pip show -q slicer 2>/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/brain_extraction_demo.py --out demo-output

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

benchmark: $(STAMP)
	$(PY) benchmarks/segmentation.py

benchmark-classification: $(STAMP)
	$(PY) benchmarks/classification.py

benchmark-training: $(STAMP)
	$(PY) benchmarks/training.py

benchmark-enhancement: $(STAMP)
	$(PY) benchmarks/enhancement.py

benchmark-registration: $(STAMP)
	$(PIP) install --no-deps -r requirements-benchmark.txt
	$(PY) benchmarks/registration.py

benchmark-nnunet: $(STAMP)
	$(PY) benchmarks/nnunet.py

benchmark-editor-fill: $(STAMP)
	$(PY) benchmarks/editor_fill.py

benchmark-batch: $(STAMP)
	$(PY) benchmarks/batch.py

benchmark-server: $(STAMP)
	$(PY) benchmarks/server.py

benchmark-interactive: $(STAMP)
	$(PY) benchmarks/interactive.py

clean:
	rm -rf $(VENV) demo-output
