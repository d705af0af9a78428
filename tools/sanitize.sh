#!/usr/bin/env bash
# Runs the test suite (fuzz suite included) against the sanitized build in
# $1 (a library made with tools/Makevars.sanitize) and fails on any
# AddressSanitizer or UndefinedBehaviorSanitizer report.  R's own code is not
# instrumented, so the ASan runtime is preloaded; leak detection is off
# because R frees its heap lazily by design.  Reports of every process
# (child R processes of the fuzz suite too) go to files under $2.
set -uo pipefail
lib=$1
logs=$2
rm -rf "$logs" && mkdir -p "$logs"
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
for f in $preload; do
  [ -e "$f" ] || { echo "make sanitize: $f not found (gcc's sanitizer runtime is needed)"; exit 1; }
done
export LD_PRELOAD="$preload"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$logs/asan"
# gcc 12 combined with ASan ignores a UBSan log_path: UBSan reports go to
# stderr, which is why the test output is grepped for them as well.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export R_LIBS="$lib" NOT_CRAN=true VBAYES_SANITIZE=1
${RSCRIPT:-Rscript} tools/run-tests.R 2>&1 | tee "$logs/../tests.log"
status=${PIPESTATUS[0]}
unset LD_PRELOAD
reports=$(find "$logs" -type f -size +0 | sort)
if [ -n "$reports" ] || grep -qE "runtime error:|ERROR: AddressSanitizer" "$logs/../tests.log"; then
  echo "make sanitize: FAILED: sanitizer reports:"
  for r in $reports; do echo "== $r"; head -n 60 "$r"; done
  grep -E -A30 "runtime error:|ERROR: AddressSanitizer" "$logs/../tests.log" | head -n 100
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "make sanitize: the test suite failed under the sanitizers (no sanitizer report)."
  exit "$status"
fi
echo "make sanitize: no sanitizer reports."
