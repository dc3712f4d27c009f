#!/usr/bin/env bash
# Runs `fastattn bench` over every shape of the exact-speed issue and prints a markdown table.
#   bench/shapes.sh [--quick]     (--quick skips the 131072-token run, which takes about a minute)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dotnet build -c Release "$root/src/FastAttention.Cli" >/dev/null
cli=(dotnet "$root/artifacts/bin/FastAttention.Cli/release/fastattn.dll")
quick=${1:-}

row() { # label, then bench arguments
    local label="$1"; shift
    "${cli[@]}" bench "$@" --json | python3 "$root/bench/shape_row.py" "$label"
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%Y-%m-%d)"
echo
echo "| shape | threads | median ms | GFLOP/s | % of measured FMA peak | peak working set | input read rate |"
echo "|---|---|---:|---:|---:|---:|---|"
for t in 1 2; do row "n=4096, d=64" --n 4096 --d 64 --threads "$t"; done
for t in 1 2; do row "n=4096, d=64, causal (visible pairs)" --n 4096 --d 64 --causal --threads "$t"; done
row "n=4096, d=128" --n 4096 --d 128 --threads 2
row "n=4096, d=32" --n 4096 --d 32 --threads 2
row "b=4, h=8, n=1024, d=64" --batch 4 --heads 8 --n 1024 --d 64 --threads 2
row "b=1, h=1, n=1024, d=64" --n 1024 --d 64 --threads 2
for t in 1 2; do row "decode: 1 query, 32768 keys, 32 heads, d=128" --n 1 --nk 32768 --heads 32 --d 128 --threads "$t" --repeat 10 --bandwidth; done
for t in 1 2; do row "decode, grouped: 32 query heads on 8 kv heads, 32768 keys, d=128" --n 1 --nk 32768 --heads 32 --kv-heads 8 --d 128 --threads "$t" --repeat 10 --bandwidth; done
for t in 1 2; do row "GEMM 4096^3" --method gemm --n 4096 --threads "$t" --repeat 3; done
if [[ "$quick" != "--quick" ]]; then
    row "n=131072, d=64 (long context)" --n 131072 --d 64 --threads 2 --repeat 1
fi
