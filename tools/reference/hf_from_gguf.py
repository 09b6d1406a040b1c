#!/usr/bin/env python3
"""Load a GGUF model with transformers (dequantising every weight to float32) and save it as a
Hugging Face directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).

Usage: hf_from_gguf.py GGUF OUT_DIR

The weights are checked against gguf-py's own dequantisation of the same file before saving
(bit-equal for every tensor that transformers does not reorder; the q/k projections, which it
un-permutes from llama.cpp's rotary layout, are checked as multisets), so the directory holds
exactly the weights the quantised GGUF stands for.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, quants
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    gguf_path = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2])
    directory, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.eval()

    # Cross-check the dequantised weights against gguf-py on a few tensors of each kind.
    reader = GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()

    def dequant(gguf_name: str) -> np.ndarray:
        t = tensors[gguf_name]
        shape = [int(x) for x in reversed(list(t.shape))]
        return quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)

    last = model.config.num_hidden_layers - 1
    exact = [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight")]
    permuted = []
    for layer in (0, last):
        exact += [
            (f"model.layers.{layer}.self_attn.v_proj.weight", f"blk.{layer}.attn_v.weight"),
            (f"model.layers.{layer}.self_attn.o_proj.weight", f"blk.{layer}.attn_output.weight"),
            (f"model.layers.{layer}.mlp.gate_proj.weight", f"blk.{layer}.ffn_gate.weight"),
            (f"model.layers.{layer}.mlp.up_proj.weight", f"blk.{layer}.ffn_up.weight"),
            (f"model.layers.{layer}.mlp.down_proj.weight", f"blk.{layer}.ffn_down.weight"),
            (f"model.layers.{layer}.input_layernorm.weight", f"blk.{layer}.attn_norm.weight"),
            (f"model.layers.{layer}.post_attention_layernorm.weight", f"blk.{layer}.ffn_norm.weight"),
        ]
        permuted += [
            (f"model.layers.{layer}.self_attn.q_proj.weight", f"blk.{layer}.attn_q.weight"),
            (f"model.layers.{layer}.self_attn.k_proj.weight", f"blk.{layer}.attn_k.weight"),
        ]
    for hf_name, gguf_name in exact:
        if hf_name in state and gguf_name in tensors:
            if not np.array_equal(state[hf_name].numpy(), dequant(gguf_name)):
                sys.exit(f"dequantised {hf_name} differs from gguf-py's {gguf_name}")
    for hf_name, gguf_name in permuted:
        if hf_name in state and gguf_name in tensors:
            a, b = state[hf_name].numpy(), dequant(gguf_name)
            if a.shape != b.shape or not np.array_equal(np.sort(a, axis=None), np.sort(b, axis=None)):
                sys.exit(f"dequantised {hf_name} is not a permutation of gguf-py's {gguf_name}")
    print(f"weights: {len(exact)} tensors bit-equal to gguf-py's dequantisation, {len(permuted)} q/k permutations checked")

    # transformers marks a GGUF-loaded model as quantised even when it dequantised everything;
    # drop that mark so save_pretrained writes a plain float32 checkpoint.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    # What the tokenizer files cannot say for sure: whether llama.cpp puts BOS first. llama.cpp
    # follows the GGUF key tokenizer.ggml.add_bos_token; reference.py reads it from here.
    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    sha = hashlib.sha256()
    with open(gguf_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    meta = {
        "source_gguf": str(gguf_path),
        "source_sha256": sha.hexdigest(),
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "add_eos_token": field("tokenizer.ggml.add_eos_token"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
    }
    restore_pre_tokenizer(out / "tokenizer.json", meta["tokenizer_pre"])
    (out / "miwv_reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out} ({sum(p.numel() for p in model.parameters()):,} parameters, float32); "
          f"GGUF add_bos_token = {meta['add_bos_token']}")


# The pre-tokenizers of the original tokenizer.json files, for the GGUF `tokenizer.ggml.pre`
# values whose split transformers' GGUF loader does not reproduce: it writes a plain ByteLevel
# pre-tokenizer, while SmolLM2's splits every digit off first (llama.cpp's `smollm`: `\p{N}`,
# then GPT-2's expression). Without it, whitespace before a digit tokenises differently
# ("\n\n1." gives two newline tokens instead of one).
PRE_TOKENIZERS = {
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
}


def restore_pre_tokenizer(path: Path, pre: str | None) -> None:
    """Puts back the original pre-tokenizer of a GGUF's tokenizer family, when it is known."""
    if pre not in PRE_TOKENIZERS:
        return
    config = json.loads(path.read_text())
    config["pre_tokenizer"] = PRE_TOKENIZERS[pre]
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    print(f"tokenizer: {pre} pre-tokenizer restored in {path}")


if __name__ == "__main__":
    main()
