#!/usr/bin/env bash
# Our GEMM against OpenBLAS sgemm (through NumPy), same machine, same script run.
#   bench/peers/gemm.sh [--n 4096] [--threads "1 2"] [--repeat 3]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
n=4096 threads="1 2" repeat=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --n) n="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        *) echo "gemm.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
need_python_peer
build_cli
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%Y-%m-%d); sgemm m = n = k = $n"
printf '%-28s %4s %11s %9s %9s\n' implementation thr "median ms" GFLOP/s "vs BLAS"
for t in $threads; do
    ours=$("${cli[@]}" bench --method gemm --n "$n" --threads "$t" --repeat "$repeat" --json | "$py" -c "import json,sys; print(json.load(sys.stdin)['medianSeconds'])")
    # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE presets halved OpenBLAS's speed on the Zen 5 VM of the committed results
    # (2026-11): unset them for this command only.
    blas=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$t" "$py" "$here/peers.py" sgemm "$n" "$t" "$repeat" | "$py" -c "import json,sys; print(json.load(sys.stdin)['medianSeconds'])")
    "$py" - "$n" "$t" "$ours" "$blas" <<'PY'
import sys
n, t, ours, blas = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
flops = 2.0 * n ** 3
print(f"{'FastAttention GEMM':<28} {t:>4} {ours * 1e3:>11.1f} {flops / ours / 1e9:>9.1f} {blas / ours:>8.2f}x")
print(f"{'OpenBLAS sgemm (NumPy)':<28} {t:>4} {blas * 1e3:>11.1f} {flops / blas / 1e9:>9.1f} {1.0:>8.2f}x")
PY
done
