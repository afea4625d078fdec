#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend, each in its own process.
# Exits non-zero if any backend fails. Extra arguments go to pytest.
set -u
python=${PYTHON:-python}
failed=()
for backend in tensorflow jax torch; do
    echo "=== KERAS_BACKEND=$backend ==="
    KERAS_BACKEND=$backend "$python" -m pytest tests -q -p no:cacheprovider "$@" || failed+=("$backend")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED on: ${failed[*]}"
    exit 1
fi
echo "All backends passed."
