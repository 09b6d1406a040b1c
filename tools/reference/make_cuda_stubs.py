#!/usr/bin/env python3
"""Build do-nothing stand-ins for the CUDA libraries that PyPI's Linux torch wheel links against.

PyPI's only Linux x86-64 torch wheel is a CUDA build: its shared libraries name libcudart,
libcublas, libcudnn, libnccl, ... as DT_NEEDED, and `pip install torch` pulls about 3 GB of
NVIDIA wheels to satisfy them. The reference runs on the CPU only and never calls into CUDA,
so instead of those wheels we give the dynamic linker small stub libraries with the same
sonames, the same symbol versions and every symbol torch imports from them. Every stub
function returns an error code (35, cudaErrorInsufficientDriver, the answer of a machine
without an NVIDIA driver), and the *GetErrorString/*GetErrorName functions a fixed string,
so `torch.cuda.is_available()` is False exactly as on a GPU-less machine with CUDA installed.
Torch's own CPU kernels are untouched.

Which libraries, versions and symbols are read from torch's own ELF files (DT_NEEDED entries
that neither torch nor the system provides, their version requirements, and the undefined
symbols nothing defines), so a change of the torch pin needs no edit here. The stubs go to the
`site-packages/nvidia/cuNN/lib` directory already on the RPATH of torch's libraries, so nothing
needs LD_LIBRARY_PATH.

Usage: make_cuda_stubs.py SITE_PACKAGES   (needs gcc and binutils: readelf, nm)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ERROR_CODE = 35
STRING_FN = re.compile(r"Get(Error)?(String|Name)$")
SYSTEM_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed_and_rpath(lib: Path) -> tuple[list[str], list[str]]:
    needed, rpath = [], []
    for line in run("readelf", "-d", "-W", str(lib)).splitlines():
        m = re.search(r"\((NEEDED|RPATH|RUNPATH)\).*\[(.*)\]", line)
        if m and m.group(1) == "NEEDED":
            needed.append(m.group(2))
        elif m:
            rpath += m.group(2).split(":")
    return needed, rpath


def version_needs(lib: Path) -> dict[str, str]:
    """version name -> the file (soname) that must define it, from .gnu.version_r."""
    out, current = {}, None
    for line in run("readelf", "-V", "-W", str(lib)).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current:
            out[m.group(1)] = current
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    site = Path(sys.argv[1])
    torch_dir = site / "torch"
    libs = sorted((torch_dir / "lib").glob("*.so*")) + sorted(torch_dir.glob("_C*.so"))
    if not libs:
        sys.exit(f"no torch libraries under {torch_dir}")
    own = {p.name for p in libs}

    def on_system(soname: str) -> bool:
        return any((Path(d) / soname).exists() for d in SYSTEM_DIRS)

    missing: set[str] = set()
    versions: dict[str, str] = {}
    rpaths: list[str] = []
    for lib in libs:
        needed, rpath = needed_and_rpath(lib)
        rpaths += rpath
        missing |= {n for n in needed if n not in own and not on_system(n)}
        versions.update(version_needs(lib))
    if not missing:
        print("  torch needs no library that is missing: nothing to stub")
        return
    version_of = {soname: [v for v, f in versions.items() if f == soname] for soname in missing}

    defined: set[str] = set()
    for lib in libs:
        defined |= {line.split()[-1].split("@")[0] for line in run("nm", "-D", "--defined-only", str(lib)).splitlines() if line.strip()}
    system_libs = [Path(d) / n for d in SYSTEM_DIRS[:2] for n in ("libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1")]
    for lib in system_libs:
        if lib.exists():
            defined |= {line.split()[-1].split("@")[0] for line in run("nm", "-D", "--defined-only", str(lib)).splitlines() if line.strip()}

    wanted: dict[str, set[str]] = defaultdict(set)
    unversioned: set[str] = set()
    for lib in libs:
        for line in run("nm", "-D", "--undefined-only", str(lib)).splitlines():
            fields = line.split()
            if len(fields) < 2:
                continue
            kind, name = fields[-2], fields[-1]
            if "@" in name:
                sym, version = name.split("@", 1)
                if versions.get(version) in missing:
                    wanted[versions[version]].add(sym)
            elif kind == "U" and name not in defined and not name.startswith(("Py", "_Py")):
                unversioned.add(name)
    # An unversioned import binds to whichever loaded library defines it: give them all to one stub.
    versioned = {soname: set(syms) for soname, syms in wanted.items()}
    home = sorted(missing)[0]
    wanted[home] |= unversioned - set().union(set(), *versioned.values())

    candidates = [r.replace("$ORIGIN", str(torch_dir / "lib")) for r in rpaths if "/nvidia/" in r]
    cu = [c for c in candidates if re.search(r"/nvidia/cu\d+/lib$", c)]
    if not (cu or candidates):
        sys.exit("torch's libraries have no nvidia/ directory on their RPATH; cannot place stubs")
    out_dir = Path(cu[0] if cu else candidates[0]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        for soname in sorted(missing):
            symbols = sorted(wanted.get(soname, ()))
            src = Path(tmp) / f"{soname}.c"
            lines = [f"/* stub for {soname}: CPU-only torch, see make_cuda_stubs.py */",
                     'static const char miwv_stub_msg[] = "CUDA stub (CPU-only install)";']
            for sym in symbols:
                if STRING_FN.search(sym):
                    lines.append(f"const char *{sym}(void) {{ return miwv_stub_msg; }}")
                else:
                    lines.append(f"int {sym}(void) {{ return {ERROR_CODE}; }}")
            src.write_text("\n".join(lines) + "\n")
            cmd = ["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}"]
            nodes = version_of.get(soname) or []
            if nodes:
                script = Path(tmp) / f"{soname}.map"
                mine = versioned.get(soname, set())
                body = [f"{nodes[0]} {{\n  global:\n" + "".join(f"    {s};\n" for s in sorted(mine)) + "};\n"]
                body += [f"{v} {{ }} {nodes[0]};\n" for v in nodes[1:]]
                script.write_text("".join(body))
                cmd.append(f"-Wl,--version-script={script}")
            subprocess.run([*cmd, "-o", str(out_dir / soname), str(src)], check=True)
            print(f"  stub {soname}: {len(symbols)} symbols" + (f", version {', '.join(nodes)}" if nodes else ""))
    (out_dir / "MIWV_CUDA_STUBS").write_text(
        "These are not NVIDIA's libraries: do-nothing stubs made by miwv's tools/reference/make_cuda_stubs.py\n"
        "so that PyPI's CUDA build of torch loads on a CPU-only install.\n"
    )


if __name__ == "__main__":
    main()
