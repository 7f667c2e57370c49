# The two commands of the README: `make demo` and `make test`. Both create .venv and
# install sf3d into it (editable, with the dev extras) when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sf3d-installed
DEMO_DATA := data/synthetic_imagenet
DEMO_WORK_DIR := work_dirs/demo_imagenet

.PHONY: install demo test clean-demo

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

# Until the 3D detector lands: pretrain a tiny SpatialFormer on synthetic ImageNet on the
# CPU (validation accuracy after every epoch), then test the best checkpoint.
demo: $(STAMP)
	test -d $(DEMO_DATA)/train || $(PY) tools/make_synthetic_imagenet.py --out $(DEMO_DATA)
	$(PY) tools/train.py configs/synthetic/imagenet_tiny.py --work-dir $(DEMO_WORK_DIR)
	$(PY) tools/test.py configs/synthetic/imagenet_tiny.py \
	    "$$(ls -t $(DEMO_WORK_DIR)/best_accuracy_top1_epoch_*.pth | head -n 1)" --work-dir $(DEMO_WORK_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_WORK_DIR)
