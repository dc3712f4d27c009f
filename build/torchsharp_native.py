#!/usr/bin/python3
"""Build-time helper for TorchSharpNative.targets: libLibTorchSharp.so (TorchSharp 0.107) needs symbol
version GLIBCXX_3.4.32 for one symbol, std::ios_base_library_init(); older libstdc++ (Debian 12: 3.4.30)
lacks it and the library does not load.

  torchsharp_native.py check VERSION            prints "patch" when the system libstdc++ lacks VERSION, else "ok"
  torchsharp_native.py weaken SRC DST VERSION   copies SRC to DST and marks DST's need of VERSION weak

Only the ELF64 little-endian layout is handled (linux-x64, the one TorchSharp-cpu ships for Linux)."""
import os
import shutil
import struct
import subprocess
import sys

VER_FLG_WEAK = 0x2


def system_libstdcxx():
    """The libstdc++.so.6 the dynamic loader picks, from ldconfig's cache (else the usual paths)."""
    try:
        out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("libstdc++.so.6 ") and "x86-64" in line and "=>" in line:
                return line.split("=>", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    for path in ("/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6"):
        if os.path.exists(path):
            return path
    raise SystemExit("torchsharp_native.py: cannot find the system libstdc++.so.6")


def check(version):
    with open(system_libstdcxx(), "rb") as f:
        defined = version.encode() + b"\0" in f.read()
    print("ok" if defined else "patch")


def sections(data):
    """(name, file offset, link) of every section header."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit("torchsharp_native.py: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]

    def cstr(offset):
        return data[offset:data.index(b"\0", offset)].decode()

    return [(cstr(names_offset + h[0]), h[4], h[6]) for h in headers]


def weaken(src, dst, version):
    data = bytearray(open(src, "rb").read())
    table = sections(data)
    verneed = next((s for s in table if s[0] == ".gnu.version_r"), None)
    if verneed is None:
        raise SystemExit(f"torchsharp_native.py: {src} has no .gnu.version_r section")
    _, offset, link = verneed
    strtab = table[link][1]
    found = 0
    need = offset
    while True:
        _, count, _, aux, next_need = struct.unpack_from("<HHIII", data, need)
        entry = need + aux
        for _ in range(count):
            _, flags, _, name, next_aux = struct.unpack_from("<IHHII", data, entry)
            start = strtab + name
            if data[start:data.index(b"\0", start)].decode() == version:
                struct.pack_into("<H", data, entry + 4, flags | VER_FLG_WEAK)
                found += 1
            entry += next_aux
        if next_need == 0:
            break
        need += next_need
    if found == 0:
        raise SystemExit(f"torchsharp_native.py: {src} does not need {version}")
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    shutil.copymode(src, tmp)
    os.replace(tmp, dst)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "weaken":
        weaken(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
