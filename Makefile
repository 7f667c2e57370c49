# The two commands of the README: `make demo` and `make test`. Both create .venv and
# install sf3d into it (editable, with the dev extras) when it is missing or stale, pinned
# to the exact versions in constraints.txt (the set the suite was verified with; setup.cfg
# keeps the ranges for `pip install -e .` into your own environment). `make lock` refreshes
# constraints.txt from a fresh, unconstrained resolve.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sf3d-installed
LOCK := constraints.txt
LOCK_VENV := .venv-lock
DEMO_NUSC := data/nuscenes_synthetic
DEMO_CONFIG := configs/synthetic/nuscenes_tiny.py
DEMO_WORK_DIR := work_dirs/demo_nuscenes
IMAGENET_DATA := data/synthetic_imagenet
IMAGENET_WORK_DIR := work_dirs/demo_imagenet

.PHONY: install lock demo demo-imagenet test clean-demo

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint $(LOCK) -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

# Resolve setup.cfg's ranges (with the dev extras) in a throwaway venv and write every
# resolved version to constraints.txt. Run `make test` on the result before committing it.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(LOCK_VENV)/bin/python -m pip check
	{ echo "# Exact versions for make install/demo/test (Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -m))."; \
	  echo "# Written by \`make lock\` on $$(date -u +%Y-%m-%d); setup.cfg holds the supported ranges."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort -f; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

# The multi-view 3D detector on the synthetic nuScenes mini (made once, ~30 s): train on the
# CPU (devkit NDS on mini_val every 4 epochs), test the best checkpoint with the devkit, then
# draw its predictions against GT on the six views and in BEV.
demo: $(STAMP)
	test -f $(DEMO_NUSC)/nuscenes_infos_val.pkl || { \
	    $(PY) tools/make_synthetic_nuscenes.py --out $(DEMO_NUSC) --samples-per-scene 20 && \
	    $(PY) tools/create_data.py nuscenes --root-path $(DEMO_NUSC) --version v1.0-mini; }
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) \
	    "$$(ls -t $(DEMO_WORK_DIR)/best_NuScenes_NDS_epoch_*.pth | head -n 1)" --work-dir $(DEMO_WORK_DIR) \
	    --cfg-options test_evaluator.jsonfile_prefix=$(DEMO_WORK_DIR)/results
	$(PY) tools/visualize.py --data-root $(DEMO_NUSC) --ann-file nuscenes_infos_val.pkl --index 0 \
	    --results $(DEMO_WORK_DIR)/results/results_nusc.json --score-thr 0.3 --out $(DEMO_WORK_DIR)/predictions.png

# SpatialFormer pretraining on synthetic ImageNet (a tiny model, a few CPU minutes).
demo-imagenet: $(STAMP)
	test -d $(IMAGENET_DATA)/train || $(PY) tools/make_synthetic_imagenet.py --out $(IMAGENET_DATA)
	$(PY) tools/train.py configs/synthetic/imagenet_tiny.py --work-dir $(IMAGENET_WORK_DIR)
	$(PY) tools/test.py configs/synthetic/imagenet_tiny.py \
	    "$$(ls -t $(IMAGENET_WORK_DIR)/best_accuracy_top1_epoch_*.pth | head -n 1)" --work-dir $(IMAGENET_WORK_DIR)

# Two xdist workers (the CI machine has 2 cores); --dist loadfile keeps a module's tests, and so its
# module-scoped fixtures (trained models, synthetic datasets), on one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean-demo:
	rm -rf $(DEMO_NUSC) $(DEMO_WORK_DIR) $(IMAGENET_DATA) $(IMAGENET_WORK_DIR)
