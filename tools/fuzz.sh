#!/usr/bin/env bash
# Fuzzes the .npy, .npz and safetensors readers with AFL++ through SharpFuzz.
# usage: tools/fuzz.sh [--seconds S] [--target npy|npz|safetensors|all] [--out DIR]
# Installs afl++ (apt-get, as root) and the SharpFuzz.CommandLine tool when absent, builds fuzz/FastAttention.Fuzz into
# a temp folder, instruments that copy of FastAttention.dll and runs afl-fuzz for S seconds per target on the committed
# seeds (fuzz/seeds/<target>, never written to). Exits 1 on a crash (an unexpected exception or an allocation the
# input cannot justify: see fuzz/FastAttention.Fuzz/Program.cs) or a hang (> 1 s for one input); AFL++'s state and
# findings are kept in DIR/<target>/ (default artifacts/fuzz), which is emptied first.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
target=all
out_root=artifacts/fuzz
while (( $# > 0 )); do
    case "$1" in
        --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
        --target) target="${2:?--target needs npy, npz, safetensors or all}"; shift 2 ;;
        --out) out_root="${2:?--out needs a folder}"; shift 2 ;;
        *) echo "fuzz.sh: unknown argument '$1' (usage: tools/fuzz.sh [--seconds S] [--target npy|npz|safetensors|all] [--out DIR])" >&2; exit 2 ;;
    esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds '$seconds' is not a positive whole number" >&2; exit 2; }
case "$target" in
    all) targets=(npy npz safetensors) ;;
    npy|npz|safetensors) targets=("$target") ;;
    *) echo "fuzz.sh: --target '$target' is not npy, npz, safetensors or all" >&2; exit 2 ;;
esac

if ! command -v afl-fuzz >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends afl++ >/dev/null
    else
        echo "fuzz.sh: afl-fuzz is missing: install Debian's afl++ (needs root)" >&2; exit 1
    fi
fi
tools_dir=artifacts/fuzz-tools
if [[ ! -x "$tools_dir/sharpfuzz" ]]; then
    dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$tools_dir" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dotnet build fuzz/FastAttention.Fuzz -c Release -o "$work/bin" --nologo >"$work/build.log" 2>&1 || { tail -n 20 "$work/build.log"; exit 1; }
"$tools_dir/sharpfuzz" "$work/bin/FastAttention.dll" >/dev/null

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_BIN_CHECK=1
status=0
for t in "${targets[@]}"; do
    out="$out_root/$t"
    rm -rf "$out"; mkdir -p "$out"
    afl-fuzz -i "fuzz/seeds/$t" -o "$out" -t 1000 -m none -V "$seconds" -- dotnet "$work/bin/FastAttention.Fuzz.dll" "$t" >"$out/afl.log" 2>&1 || { echo "$t: afl-fuzz failed:"; tail -n 15 "$out/afl.log"; status=1; continue; }
    stats="$out/default/fuzzer_stats"
    value() { sed -nE "s/^$1 +: +//p" "$stats"; }
    crashes=$(value saved_crashes); hangs=$(value saved_hangs)
    echo "$t: $(value execs_done) executions in $(value run_time) s, $(value corpus_count) inputs in the corpus, $crashes crashes, $hangs hangs"
    if [[ "$crashes" != 0 || "$hangs" != 0 ]]; then
        echo "$t: findings in $out/default/crashes and $out/default/hangs"; status=1
    fi
done
echo "fuzz: $([[ $status -eq 0 ]] && echo "no findings" || echo "FINDINGS") (${targets[*]}, $seconds s each)"
exit "$status"
