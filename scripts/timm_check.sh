#!/usr/bin/env bash
# The timm path of kpfast.protection.model_transform, tested in a virtual environment of its own.
#
# timm imports torchvision, and every torchvision wheel is built against one torch: the `vit`
# extra's pair (timm 1.0.29, torchvision 0.29.1) needs torch 2.14.1, not the torch of the main
# environment. So this script makes a fresh venv with torch 2.14.1 and that pair, builds kpfast
# against it (CPU only), and runs tests/test_model_transform_timm.py there; the test must run,
# not skip.
#
# Usage, from anywhere (the repository is found from this file):
#     bash scripts/timm_check.sh
# Environment: KPFAST_TIMM_WORK (the venv and the build folder, default build/timm-check).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${KPFAST_TIMM_WORK:-build/timm-check}")
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

python3 -m venv --clear "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.14.1 numpy pybind11 "scikit-build-core>=1.0" ninja
"$py" -m pip install -q --no-build-isolation --no-deps \
  -C build-dir="$work/cmake" -C cmake.define.KPFAST_CUDA=OFF .
mapfile -t extras < <("$py" -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(*d["vit"], *d["test"], sep="\n")')
"$py" -m pip install -q "${extras[@]}"

# From outside the source tree, so that the installed kpfast is the one tested.
cd "$work"
"$py" -c 'import torch, torchvision, timm; print(f"timm check: torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")'
"$py" -m pytest -q -p no:cacheprovider -rs "$OLDPWD/tests/test_model_transform_timm.py" | tee "$work/pytest.log"
if grep -q "skipped" "$work/pytest.log"; then
  echo "timm check: the timm tests skipped; they must run here" >&2
  exit 1
fi
