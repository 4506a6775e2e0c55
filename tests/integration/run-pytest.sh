#!/bin/sh
# run-pytest.sh — the automake TESTS entry for the integration suite (pytest against the
# real host). Runs from the top builddir; must work with a read-only srcdir (distcheck),
# so pytest writes nothing next to the sources: no cache, no bytecode, stubs in tmp.
#
# Extra arguments go to pytest, e.g.  run-pytest.sh tests/integration/test_smoke.py -x
# MP_PYTHON overrides the interpreter (default /usr/bin/python3, which has grpcio).

here=$(cd "$(dirname "$0")" && pwd) || exit 99
: "${MP_SRCDIR:=$(cd "$here/../.." && pwd)}"
: "${MP_BUILDDIR:=$(pwd)}"
export MP_SRCDIR MP_BUILDDIR
PYTHONDONTWRITEBYTECODE=1
export PYTHONDONTWRITEBYTECODE
py=${MP_PYTHON:-/usr/bin/python3}

if ! "$py" -c 'import pytest, grpc, google.protobuf' 2>/dev/null; then
  echo "run-pytest.sh: $py lacks pytest, grpcio or protobuf" \
       "(Debian: python3-pytest python3-grpcio python3-protobuf)" >&2
  exit 99
fi

# Run the whole suite unless the arguments already name tests (files, dirs, node ids).
default_path=$here
for arg in "$@"; do
  case $arg in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then default_path=; fi ;;
  esac
done

mkdir -p "$MP_BUILDDIR/tests/integration" || exit 99
"$py" -m pytest -p no:cacheprovider -q -rfE \
  -c "$here/pytest.ini" --rootdir="$here" \
  --junitxml="$MP_BUILDDIR/tests/integration/pytest-junit.xml" \
  ${default_path:+"$default_path"} "$@"
status=$?
# 5 = nothing collected: a suite that silently runs no tests is a failure.
if [ "$status" -eq 5 ]; then
  echo "run-pytest.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
