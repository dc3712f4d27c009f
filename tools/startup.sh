#!/usr/bin/env bash
# Start-up time of the installed fastattn tool: packs the CLI, installs it into a temp tool folder and prints the
# mean wall time of N runs (default 10) of --version, --help, a small attend and an inspect on the OCR fixture.
# usage: tools/startup.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dotnet pack src/FastAttention.Cli -c Release -o "$work/packages" --nologo >"$work/pack.log" 2>&1 || { tail -n 20 "$work/pack.log"; exit 1; }
version=$(sed -nE 's/.*<Version>([^<]+)<\/Version>.*/\1/p' Directory.Build.props | head -n 1)
dotnet tool install FastAttention.Cli --version "$version" --tool-path "$work/tools" --add-source "$work/packages" >/dev/null
fixture=data/ocr/line40/block2
mean() {
    local start end
    start=$(date +%s.%N)
    for _ in $(seq "$runs"); do "$@" >/dev/null; done
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$runs" 'BEGIN { printf "%.3f", (e - s) / n }'
}
tool="$work/tools/fastattn"
echo "fastattn $version, mean of $runs runs, $(lscpu | sed -nE 's/^Model name: +//p'), $(date -u +%Y-%m-%d)"
printf '%-10s %s s\n' "--version" "$(mean "$tool" --version)"
printf '%-10s %s s\n' "--help" "$(mean "$tool" --help)"
printf '%-10s %s s\n' "attend" "$(mean "$tool" attend --q $fixture/q.npy --k $fixture/k.npy --v $fixture/v.npy --out "$work/o.npy" --force)"
printf '%-10s %s s\n' "inspect" "$(mean "$tool" inspect --q $fixture/q.npy --k $fixture/k.npy --no-plan)"
