#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend, each in its own process.
# Exits non-zero if any backend fails. Extra arguments go to pytest.
#
# Two streams run side by side: jax alone, and tensorflow then torch. A pytest
# process keeps only about 1.2 of the 2 CI cores busy (XLA and tf.function
# compile on one thread, and tiny test models leave the matmul threads idle), so
# the streams fill each other's gaps (13 to 15 minutes for .ci/run on 2 cores,
# 2026-12-04). Side by side, each stream's math libraries get one thread:
# torch's OpenMP threads spin while they wait, and with the other stream on the
# second core a small torch fit ran 3.8 times slower on torch's 2 threads.
# BEIT_TEST_STREAMS=1 runs the three backends one after another, with the
# libraries' own thread counts.
set -u
python=${PYTHON:-python}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# XLA compiling accounts for about 60% of the jax stream's time, and many tests
# compile the same program (a train step before and after a reload, each weight
# shape's initializer). A cache that lives as long as this run compiles each once.
export JAX_COMPILATION_CACHE_DIR="$logs/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

run_backend() {
    local backend=$1
    local start=$SECONDS
    KERAS_BACKEND=$backend "$python" -m pytest tests -q -p no:cacheprovider "${@:2}" >"$logs/$backend.log" 2>&1
    local rc=$?
    echo "$rc" >"$logs/$backend.rc"
    echo "--- $backend finished in $((SECONDS - start)) s (exit $rc)"
}

if [ "${BEIT_TEST_STREAMS:-2}" = 1 ]; then
    for backend in tensorflow jax torch; do run_backend "$backend" "$@"; done
else
    export OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    run_backend jax "$@" &
    jax_stream=$!
    run_backend tensorflow "$@"
    run_backend torch "$@"
    wait "$jax_stream"
fi

failed=()
for backend in tensorflow jax torch; do
    echo "=== KERAS_BACKEND=$backend ==="
    cat "$logs/$backend.log"
    [ "$(cat "$logs/$backend.rc" 2>/dev/null)" = 0 ] || failed+=("$backend")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED on: ${failed[*]}"
    exit 1
fi
echo "All backends passed."
