#!/usr/bin/env bash
# Peer harness: FastAttention's exact kernel, ONNX Runtime's fused MultiHeadAttention and NumPy/OpenBLAS
# on identical inputs, in one run; every output is checked against a float64 reference.
#
#   bench/peers/run.sh [--n 4096] [--d 64] [--heads 1] [--threads "1 2"] [--repeat 20] [--seed 1]
#
# Installs its own extras on first use: Debian python3-numpy and python3-onnx (apt), and npm
# onnxruntime-node@1.30.0 into bench/peers/node_modules. Optional: the library, CLI and tests never need it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
n=4096 d=64 heads=1 threads="1 2" repeat=20 seed=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --n) n="$2"; shift 2 ;;
        --d) d="$2"; shift 2 ;;
        --heads) heads="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

need_python_peer onnx:python3-onnx
if [[ ! -d "$here/node_modules/onnxruntime-node" ]]; then
    echo "installing onnxruntime-node@1.30.0 (npm)..." >&2
    (cd "$here" && npm install --ignore-scripts --no-package-lock --no-audit --no-fund >/dev/null)
fi

build_cli

work="$here/work/n${n}_d${d}_h${heads}"
mkdir -p "$work"
rm -f "$work/results.jsonl"
"$py" "$here/peers.py" inputs "$work" "$n" "$d" "$heads" "$seed"
"$py" "$here/peers.py" model "$work" "$n" "$d" "$heads"

record() { # impl threads medianSeconds outputFile
    local check
    check=$("$py" "$here/peers.py" check "$work" "$4")
    "$py" -c "import json,sys; c=json.loads(sys.argv[4]); print(json.dumps({'impl': sys.argv[1], 'threads': int(sys.argv[2]), 'medianSeconds': float(sys.argv[3]), **c}))" \
        "$1" "$2" "$3" "$check" >> "$work/results.jsonl"
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "CPU: $cpu, $(nproc) cores; $(date -u +%Y-%m-%d)"
for t in $threads; do
    json=$("${cli[@]}" bench --q "$work/q.npy" --k "$work/k.npy" --v "$work/v.npy" --threads "$t" --repeat "$repeat" --out "$work/ours.npy" --force --json)
    kernel=$("$py" -c "import json,sys; print(json.loads(sys.stdin.read())['kernel'])" <<<"$json")
    median=$("$py" -c "import json,sys; print(json.loads(sys.stdin.read())['medianSeconds'])" <<<"$json")
    record "FastAttention $kernel" "$t" "$median" "$work/ours.npy"

    json=$(cd "$here" && node ort.mjs "$work" "$t" "$repeat")
    median=$("$py" -c "import json,sys; print(json.loads(sys.stdin.read())['medianSeconds'])" <<<"$json")
    record "onnxruntime" "$t" "$median" "$work/ort_out.npy"

    # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE presets halved OpenBLAS's speed on the Zen 5 VM of the committed results
    # (2026-11): unset them for this command only.
    json=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$t" "$py" "$here/peers.py" numpy "$work" "$t" "$repeat")
    median=$("$py" -c "import json,sys; print(json.loads(sys.stdin.read())['medianSeconds'])" <<<"$json")
    record "numpy (OpenBLAS, naive)" "$t" "$median" "$work/numpy_out.npy"
done
"$py" "$here/peers.py" summary "$work" "$n" "$d" "$heads"
