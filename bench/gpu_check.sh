#!/usr/bin/env bash
# bench/gpu_check.py on a GPU machine that has torch but not this project's pure-Python dependencies,
# and no network: the wheels travel in .whl/ (git-ignored) beside the checkout.
#
#   bash bench/gpu_check.sh fetch       # here, with the package registries: cp312 manylinux wheels into .whl/
#   bash bench/gpu_check.sh run [ARGS]  # on the GPU machine: install them offline, run bench/gpu_check.py ARGS
#
# The GPU check machine has Python 3.12 and torch 2.11 (CUDA 13), numpy, OpenCV, scikit-image, scipy,
# Pillow, PyYAML, pyarrow, psutil, click and tqdm; it lacks pydantic (the configuration), webdataset
# (the loader) and matplotlib (the evaluation's pictures). docs/platform-notes.md says why not Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(pydantic webdataset matplotlib)
case "${1:-}" in
  fetch)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download --quiet --dest .whl --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        "${WHEELS[@]}"
    # numpy and Pillow are on the GPU machine already; their wheels need not travel.
    rm -f .whl/numpy-*.whl .whl/pillow-*.whl .whl/PyYAML-*.whl .whl/pyyaml-*.whl
    du -sh .whl && ls .whl
    ;;
  run)
    shift
    python3 -m pip install --quiet --no-index --find-links .whl "${WHEELS[@]}"
    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py "$@"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh fetch | run [bench/gpu_check.py arguments]" >&2
    exit 2
    ;;
esac
