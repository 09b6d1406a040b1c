#!/usr/bin/env python3
"""Check that an F32 GGUF holds exactly the dequantised weights and the tokenizer of a source GGUF.

Usage: check_gguf_equal.py SOURCE.gguf F32.gguf

Every tensor of F32.gguf must be F32 and bit-equal to gguf-py's dequantisation of the tensor of
the same name in SOURCE.gguf (llama.cpp's converter re-permutes q/k into llama.cpp's rotary
layout, so after the HF round trip they are back in place). The tokenizer keys that change how
text becomes ids (model, pre-tokenizer, tokens, merges, token types, special ids, add_bos/eos)
must be equal too. Other metadata (name, licence, file type) is listed, not checked.
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader, quants

TOKENIZER_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
]


def fields(reader: GGUFReader) -> dict:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field gguf-py cannot render is compared as absent
            out[key] = None
    return out


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    fs, fd = fields(src), fields(dst)
    problems = []
    for key in TOKENIZER_KEYS:
        if fs.get(key) != fd.get(key):
            problems.append(f"tokenizer key {key} differs")
    other = sorted(k for k in set(fs) | set(fd) if k not in TOKENIZER_KEYS and fs.get(k) != fd.get(k))
    ts = {t.name: t for t in src.tensors}
    td = {t.name: t for t in dst.tensors}
    if set(ts) != set(td):
        problems.append(f"tensor names differ: {sorted(set(ts) ^ set(td))[:10]}")
    equal = 0
    for name, t in ts.items():
        if name not in td:
            continue
        d = td[name]
        if d.tensor_type.name != "F32":
            problems.append(f"{name} is {d.tensor_type.name}, not F32")
            continue
        want = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        got = np.asarray(d.data, dtype=np.float32).reshape(-1)
        if want.shape != got.shape or not np.array_equal(want, got):
            problems.append(f"{name} differs from the dequantised source")
        else:
            equal += 1
    print(f"{equal}/{len(ts)} tensors bit-equal to the dequantised source; tokenizer keys equal: "
          f"{not any(p.startswith('tokenizer') for p in problems)}")
    if other:
        print("other metadata that differs (not checked): " + ", ".join(other))
    if problems:
        sys.exit("NOT EQUAL:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
