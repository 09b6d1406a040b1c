#!/usr/bin/env python3
"""Independent reference for miwv's scores: zero-shot loss, one-shot loss and MIWV computed with
Hugging Face transformers in float32 on the CPU, one sequence at a time, no padding, no cache
reuse, written straight from docs/METHOD.md (it shares no code with the Rust side).

    reference.py --model HF_DIR --data DATA --neighbours SCORES_JSONL \\
        [--template alpaca|raw] [--ctx-size N] [--append-eos] [--bos auto|on|off] --out FILE

HF_DIR is the directory hf_from_gguf.py wrote (the GGUF's weights dequantised to float32, its
tokenizer as tokenizer.json, and miwv_reference.json with the GGUF's add_bos_token). Retrieval is
not redone: each sample's example is the `neighbour_index` of the same line of a miwv
scores.jsonl, so both sides score the same pairs. The output is one JSON line per input sample,
in input order, with the field names of miwv's scores.jsonl.

The token layout (docs/METHOD.md, "Token accounting"):
  block(s)   = tokens(prompt(s)) + tokens(output(s)) [+ EOS with --append-eos]
  zero-shot  = [BOS] block_i
  one-shot   = [BOS] block_k[dropped:] SEP block_i
each segment tokenised on its own as plain text (no special tokens added, special-token syntax
in the text not parsed, as llama.cpp's tokenize(parse_special=false)) and the ids concatenated.
BOS is put first only when the model asks for it (the GGUF's tokenizer.ggml.add_bos_token;
SmolLM2's says false, so its sequences start with the block's first token, as in llama.cpp).
The logits at position t score the token at t+1; log-softmax in float32 over the whole
vocabulary; L = mean over the response tokens of -log p. Context: when [BOS] + block_i alone is
longer than --ctx-size the sample is NaN with reason `too_long`; otherwise the example is cut
from the left to make the one-shot sequence fit (the separator goes with it when nothing of the
example is left), and the number of example tokens cut is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Before torch loads libgomp: OpenMP threads that spin at barriers crawl on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SEPARATORS = {"alpaca": "\n\n", "raw": "\n"}


def render_prompt(template: str, instruction: str, input_text: str) -> str:
    """The prompt part of a sample's block (ends in a newline, so the response starts on a token boundary)."""
    if template == "alpaca":
        if input_text:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "raw":
        return f"{instruction}\n{input_text}\n" if input_text else f"{instruction}\n"
    raise ValueError(f"unknown template {template!r}")


# ---------------------------------------------------------------------------------------------
# Reading


def read_records(path: Path) -> list[dict]:
    """A JSON array, or JSON Lines (blank lines skipped)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    samples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            sys.exit(f"{path}: record {index}: expected a JSON object")

        def text_field(name: str, required: bool) -> str:
            value = record.get(name)
            if value is None:
                if required:
                    sys.exit(f"{path}: record {index}: field `{name}` missing or null")
                return ""
            if not isinstance(value, str):
                sys.exit(f"{path}: record {index}: field `{name}`: expected a string")
            return value

        raw_id = record.get("id")
        if raw_id is None:
            sample_id = str(index)
        elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, float)):
            sys.exit(f"{path}: record {index}: field `id`: expected a string or number")
        else:
            sample_id = raw_id if isinstance(raw_id, str) else json.dumps(raw_id)
        samples.append(
            {
                "id": sample_id,
                "instruction": text_field("instruction", True),
                "input": text_field("input", False),
                "output": text_field("output", True),
            }
        )
    return samples


def read_neighbours(path: Path, samples: list[dict]) -> list[int | None]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(samples):
        sys.exit(f"{path}: {len(lines)} lines for {len(samples)} samples")
    neighbours: list[int | None] = []
    for index, (line, sample) in enumerate(zip(lines, samples)):
        if line.get("index", index) != index or str(line.get("id")) != sample["id"]:
            sys.exit(
                f"{path}: line {index + 1} is sample {line.get('id')!r} (index {line.get('index')}), "
                f"expected {sample['id']!r} (index {index}): not the scores of this data file"
            )
        k = line.get("neighbour_index")
        if k is not None and not (0 <= k < len(samples) and k != index):
            sys.exit(f"{path}: line {index + 1}: bad neighbour_index {k}")
        neighbours.append(k)
    return neighbours


# ---------------------------------------------------------------------------------------------
# Tokens


class Tokens:
    """Segment-wise tokenisation with the HF tokenizer saved from the GGUF."""

    def __init__(self, tokenizer, bos_id: int | None, eos_id: int | None, append_eos: bool):
        self.tokenizer = tokenizer
        self.prefix = [bos_id] if bos_id is not None else []
        self.eos = [eos_id] if (append_eos and eos_id is not None) else []
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if text == "":
            return []
        ids = self.cache.get(text)
        if ids is None:
            ids = self.tokenizer(
                text,
                add_special_tokens=False,  # no BOS/EOS added by the tokenizer
                split_special_tokens=True,  # "<|im_start|>" in the text is plain text
            )["input_ids"]
            self.cache[text] = ids
        return list(ids)

    def block(self, template: str, sample: dict) -> tuple[list[int], int]:
        """(prompt tokens + response tokens [+ EOS], number of prompt tokens)."""
        prompt = self.encode(render_prompt(template, sample["instruction"], sample["input"]))
        response = self.encode(sample["output"])
        if response:
            response = response + self.eos
        return prompt + response, len(prompt)


# ---------------------------------------------------------------------------------------------
# Scoring


def response_loss(model, torch, tokens: list[int], start: int) -> float:
    """Mean -log p of tokens[start:], each from the logits of the token before it."""
    n_scored = len(tokens) - start
    assert start >= 1 and n_scored >= 1
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.inference_mode():
        # Logits for the positions start-1 .. len-2 only (plus the last, dropped): the same
        # rows of the same float32 lm_head product, without a [len x vocab] matrix.
        out = model(input_ids=ids, use_cache=False, logits_to_keep=n_scored + 1)
        logits = out.logits[0, :-1, :].float()  # [n_scored, vocab]
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(tokens[start:], dtype=torch.long)
        nll = -logp.gather(1, target[:, None])[:, 0]
    return float(nll.double().mean())


def register_f16_kv_attention(torch) -> str:
    """An eager attention that rounds as llama.cpp does with its default F16 KV cache and flash
    attention off: K and V are stored as float16, Q is converted to float16 for the K·Q product
    and the softmax probabilities for the V product (ggml converts the f32 operand of an f16
    matmul to f16); products accumulate in float32. A diagnostic, not the reference: it sizes
    the effect of that rounding, to set against a difference from miwv."""
    from transformers import AttentionInterface

    def round16(t):
        return t.to(torch.float16).to(torch.float32)

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        groups = module.num_key_value_groups
        key = round16(key).repeat_interleave(groups, dim=1)
        value = round16(value).repeat_interleave(groups, dim=1)
        weights = torch.matmul(round16(query), key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask[:, :, :, : key.shape[-2]]
        else:  # transformers leaves the causal mask to the kernel for custom attentions
            q_len, k_len = weights.shape[-2], weights.shape[-1]
            future = torch.ones(q_len, k_len, dtype=torch.bool).triu(k_len - q_len + 1)
            weights = weights.masked_fill(future, float("-inf"))
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
        out = torch.matmul(round16(weights), value)
        return out.transpose(1, 2).contiguous(), weights

    AttentionInterface.register("miwv_f16_kv", attention)
    return "miwv_f16_kv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="HF directory written by hf_from_gguf.py")
    parser.add_argument("--data", required=True, type=Path, help="JSON array or JSONL of {instruction, input?, output, id?}")
    parser.add_argument("--neighbours", required=True, type=Path, help="a miwv scores.jsonl for the same data")
    parser.add_argument("--template", choices=sorted(SEPARATORS), default="alpaca")
    parser.add_argument("--ctx-size", type=int, default=2048, help="longest sequence in tokens (miwv's -c)")
    parser.add_argument("--append-eos", action="store_true", help="end each response with EOS (miwv's --append-eos)")
    parser.add_argument("--bos", choices=["auto", "on", "off"], default="auto",
                        help="BOS first: auto follows the GGUF's tokenizer.ggml.add_bos_token (miwv_reference.json)")
    parser.add_argument("--kv-cache", choices=["f32", "f16"], default="f32",
                        help="f16: round Q/K/V and attention probabilities to float16 as llama.cpp's "
                             "default F16 KV cache does (a diagnostic; the reference is f32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, help="score only the first N samples (neighbours may lie beyond)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    samples = read_records(args.data)
    neighbours = read_neighbours(args.neighbours, samples)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    meta_path = args.model / "miwv_reference.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.bos == "auto":
        add_bos = meta.get("add_bos_token")
        if add_bos is None:
            sys.exit(f"{meta_path}: no add_bos_token recorded; pass --bos on or --bos off")
    else:
        add_bos = args.bos == "on"
    bos_id = meta.get("bos_token_id", tokenizer.bos_token_id) if add_bos else None
    eos_id = meta.get("eos_token_id", tokenizer.eos_token_id)
    if add_bos and bos_id is None:
        sys.exit("the model asks for BOS but has no BOS token")
    tok = Tokens(tokenizer, bos_id, eos_id, args.append_eos)
    sep = tok.encode(SEPARATORS[args.template])

    attention = "eager" if args.kv_cache == "f32" else register_f16_kv_attention(torch)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    print(
        f"model {args.model} ({model.config.model_type}, vocab {model.config.vocab_size}), BOS "
        f"{'id ' + str(bos_id) if add_bos else 'none'}, template {args.template}, SEP ids {sep}, "
        f"ctx {args.ctx_size}, attention {attention}, {args.threads} threads",
        file=sys.stderr,
    )

    blocks = [tok.block(args.template, s) for s in samples]
    count = len(samples) if args.limit is None else min(args.limit, len(samples))
    rows = []
    started = time.time()
    scored_tokens = 0
    for i in range(count):
        sample = samples[i]
        block_i, prompt_len_i = blocks[i]
        k = neighbours[i]
        row = {
            "id": sample["id"],
            "index": i,
            "miwv": None,
            "loss_zero_shot": None,
            "loss_one_shot": None,
            "reason": None,
            "neighbour_id": samples[k]["id"] if k is not None else None,
            "neighbour_index": k,
            "response_tokens": None,
            "prompt_tokens_zero_shot": None,
            "prompt_tokens_one_shot": None,
            "example_tokens_dropped": None,
        }
        base = len(tok.prefix) + len(block_i)
        if len(block_i) == prompt_len_i:
            row["reason"] = "empty_response"
        elif base > args.ctx_size or base < 2:
            row["reason"] = "too_long"
        else:
            zero = tok.prefix + block_i
            zero_start = len(tok.prefix) + prompt_len_i
            row["loss_zero_shot"] = response_loss(model, torch, zero, zero_start)
            row["response_tokens"] = len(block_i) - prompt_len_i
            row["prompt_tokens_zero_shot"] = zero_start
            scored_tokens += len(zero)
            if k is None:
                row["reason"] = "no_neighbour"
            else:
                block_k = blocks[k][0]
                room = args.ctx_size - base
                kept = min(max(room - len(sep), 0), len(block_k))
                dropped = len(block_k) - kept
                one = list(tok.prefix)
                if kept > 0:
                    one += block_k[dropped:] + sep
                one_start = len(one) + prompt_len_i
                one += block_i
                assert len(one) <= args.ctx_size
                assert one[one_start:] == zero[zero_start:]
                row["loss_one_shot"] = response_loss(model, torch, one, one_start)
                row["prompt_tokens_one_shot"] = one_start
                row["example_tokens_dropped"] = dropped
                row["miwv"] = row["loss_one_shot"] - row["loss_zero_shot"]
                scored_tokens += len(one)
        for key in ("miwv", "loss_zero_shot", "loss_one_shot"):
            if row[key] is not None and not math.isfinite(row[key]):
                row[key] = None
        rows.append(row)
        elapsed = time.time() - started
        shown = "null" if row["miwv"] is None else f"{row['miwv']:+.4f}"
        print(
            f"[{i + 1}/{count}] {sample['id']}: miwv {shown}"
            f"{' (' + row['reason'] + ')' if row['reason'] else ''}  "
            f"{scored_tokens / max(elapsed, 1e-9):.0f} tok/s, {elapsed:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(rows)} samples, {scored_tokens} tokens in {time.time() - started:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
