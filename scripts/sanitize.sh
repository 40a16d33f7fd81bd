#!/usr/bin/env bash
# The CPU ops under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Builds kpfast._C with -fsanitize=address,undefined in its own folder (build/sanitize: the
# installed build is left as it is), loads it in place of the installed one, and runs the op tests
# (tests/test_ops.py, test_ops_scramble.py, test_ops_out.py, test_errors.py, the transform tests,
# which go through the ops), a long seeded fuzz of both raw ops with block scrambling and out=
# buffers (tests/test_ops_fuzz.py), and the CUDA kernels' element code run on the host
# (tests/test_cuda.py, built with the same sanitizers). Any sanitizer report fails the run:
# every check aborts the process at its first report, and reports are also looked for in the
# output and in ASan's report files (so one in a subprocess counts too).
#
# Usage, from the repository with its virtual environment active (CI runs it after the tests):
#     bash scripts/sanitize.sh [pytest arguments, e.g. -k fuzz]
# Environment: KPFAST_FUZZ_CASES (fuzz cases per op, default 3000), KPFAST_FUZZ_SEED (default 0),
# KPFAST_SANITIZE_BUILD (build folder, default build/sanitize).
#
# Python and torch are not instrumented: the AddressSanitizer runtime is preloaded (it must come
# first, and libstdc++ with it), and leak detection is off, since CPython keeps much of its memory
# until exit.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KPFAST_SANITIZE_BUILD:-build/sanitize}
python=$(command -v python)
sanitizers="address,undefined,float-cast-overflow"
flags="-fsanitize=$sanitizers -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"

echo "sanitize: building kpfast._C with -fsanitize=$sanitizers in $build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE= -DKPFAST_CUDA=OFF -DPython_EXECUTABLE="$python" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=$sanitizers" >/dev/null
cmake --build "$build" --target _C
echo "sanitize: built in ${SECONDS}s"
so=$(ls "$build"/_C.*.so)
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
asan=$("$cxx" -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "sanitize: $cxx has no AddressSanitizer runtime ($asan)"; exit 1; }
# libstdc++ preloaded too, so that ASan's exception interceptor finds the real __cxa_throw.
stdcxx=$(readlink -f "$("$cxx" -print-file-name=libstdc++.so)")

# Python finds this kpfast._C before the installed one (a meta path finder, first in line).
site="$build/site"
mkdir -p "$site"
cat >"$site/sitecustomize.py" <<EOF
# Written by scripts/sanitize.sh: kpfast._C is the sanitizer build.
import importlib.abc, importlib.util, sys

class _SanitizedBuild(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_file_location(name, "$PWD/$so") if name == "kpfast._C" else None

sys.meta_path.insert(0, _SanitizedBuild())
EOF

reports="$PWD/$build/reports"
rm -rf "$reports" && mkdir -p "$reports"
export PYTHONPATH="$PWD/$site${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$asan $stdcxx"
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=0:log_path=$reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
export KPFAST_FUZZ_CASES=${KPFAST_FUZZ_CASES:-3000}
export KPFAST_SANITIZE_FLAGS="$flags"

python -c "import kpfast._C as c, sys; sys.exit(c.__file__ != '$PWD/$so')" \
  || { echo "sanitize: the sanitizer build of kpfast._C was not the one loaded"; exit 1; }
echo "sanitize: running the op tests and $KPFAST_FUZZ_CASES fuzz cases per op"
# --capture=sys: reports written to the stderr file descriptor stay visible even when a report
# aborts the process (UBSan ignores log_path next to the preloaded ASan runtime).
log="$PWD/$build/tests.log"
set +e
python -m pytest -q -p no:cacheprovider --capture=sys tests/test_ops.py tests/test_ops_scramble.py \
  tests/test_ops_out.py tests/test_errors.py tests/test_transforms.py tests/test_ops_fuzz.py tests/test_cuda.py \
  "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
unset LD_PRELOAD

if compgen -G "$reports/*" >/dev/null || grep -qE ": runtime error: |ERROR: AddressSanitizer" "$log"; then
  echo "sanitize: sanitizer reports:"
  cat "$reports"/* 2>/dev/null || true
  grep -E -A3 ": runtime error: |ERROR: AddressSanitizer" "$log" || true
  exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize: tests failed (exit $status)"; exit "$status"; }
echo "sanitize: no sanitizer reports (${SECONDS}s in all)"
