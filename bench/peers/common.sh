# Shared by the peer scripts (source it): the Python peer's installs and the CLI build.
# Expects $here (this folder) to be set; defines $root, $py and the array cli.
root="$(cd "$here/../.." && pwd)"
py=/usr/bin/python3

# NumPy must find OpenBLAS (libopenblas0-pthread), not Debian's reference libblas, to be a fair peer.
# Arguments: extra Python modules and Debian packages needed besides numpy, as "module:package" pairs.
need_python_peer() {
    local modules="numpy" packages="python3-numpy libopenblas0-pthread" pair
    for pair in "$@"; do
        modules="$modules, ${pair%%:*}"
        packages="$packages ${pair##*:}"
    done
    if ! "$py" -c "import $modules" 2>/dev/null || ! ls /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
        echo "installing $packages (apt)..." >&2
        apt-get update -qq && apt-get install -y -qq $packages >/dev/null
    fi
}

build_cli() {
    echo "building the CLI..." >&2
    dotnet build -c Release "$root/src/FastAttention.Cli" >/dev/null
    cli=(dotnet "$root/artifacts/bin/FastAttention.Cli/release/fastattn.dll")
}
