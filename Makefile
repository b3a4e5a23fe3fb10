# The two commands a new user runs on a fresh machine:
#   make demo   set up, start the local platform (S3, MLflow, Ray) and run the main job
#   make test   set up and run the whole test suite (starts its own platform on free ports)
#
# GPU machines: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ISRN := $(VENV)/bin/isrn
# The CPU wheel on this machine's disk; any other torch request can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test platform-up platform-down clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes, so a second `make setup` is instant and changes nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

platform-up: setup
	$(ISRN) platform up

platform-down:
	$(ISRN) platform down

# The main job end to end on the local platform (bench/demo_timing.py times it from a fresh clone):
# train ISRN on a generated WIDER-format set with 2 Ray workers, a small Ray Tune search, promotion
# of the best run to the registry (isrn-face@champion), and detection with the champion on three
# generated val images: the first, in file order, whose every face counts in the Medium setting
# (at least 20 px tall, blur and occlusion at most moderate), so each face shown is one the demo's
# detector should find.
DEMO_IMAGES = from data_shards.synth import face_settings; from data_shards.wider_layout import WiderLayout; \
	layout = WiderLayout("data/demo"); records = sorted(layout.records("val"), key=lambda r: r.path); \
	shown = [r for r in records if r.faces and all("medium" in face_settings(f) for f in r.faces)][:3]; \
	print(" ".join(str(layout.image_path("val", r)) for r in shown))

demo: platform-up
	$(ISRN) train demo
	$(ISRN) tune tune-smoke
	$(ISRN) promote demo
	@# The generated images stay on disk after training; regenerated (same seed, same images) when
	@# data/demo was deleted while the shards were kept in the platform's S3.
	@test -d data/demo/WIDER_val/images || $(PY) -c 'from jobs.spec import load_spec; \
	    from jobs.preparation import generate_synth; generate_synth(load_spec("demo").data.synth)'
	$(ISRN) detect $$($(PY) -c '$(DEMO_IMAGES)') --out demo-detections
	@echo
	@echo "Detections:    demo-detections/ (JSON boxes and annotated images)"
	@echo "MLflow UI:     http://127.0.0.1:$${ISRN_MLFLOW_PORT:-5000}"
	@echo "Ray dashboard: http://127.0.0.1:$${ISRN_RAY_DASHBOARD_PORT:-8265}"

test: setup
	$(PY) -m pytest

clean: platform-down
	rm -rf $(VENV) .state
