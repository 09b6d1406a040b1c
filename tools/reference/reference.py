#!/usr/bin/env python3
"""Independent reference for miwv's scores: zero-shot loss, one-shot loss and MIWV computed with
Hugging Face transformers in float32 on the CPU, one sequence at a time, no padding, no cache
reuse, written straight from docs/METHOD.md (it shares no code with the Rust side).

    reference.py --model HF_DIR --data DATA --neighbours SCORES_JSONL \\
        [--template alpaca|raw|model|chatml] [--chat-template FILE] [--chat-date YYYY-MM-DD]
        [--ctx-size auto|N] [--append-eos] [--bos auto|on|off] [--first-turn] [--dump-tokens FILE] --out FILE

HF_DIR is the directory hf_from_gguf.py wrote (the GGUF's weights dequantised to float32, its
tokenizer as tokenizer.json, and miwv_reference.json with the GGUF's add_bos_token). Retrieval is
not redone: each sample's example is the `neighbour_index` of the same line of a miwv
scores.jsonl, so both sides score the same pairs. The output is one JSON line per input sample,
in input order, with the field names of miwv's scores.jsonl.

The token layout (docs/METHOD.md, "Token accounting"):
  block(s)   = tokens(prompt(s)) + tokens(output(s)) [+ EOS with --append-eos]
  zero-shot  = [BOS] block_i
  one-shot   = [BOS] block_k SEP block_i
each segment tokenised on its own as plain text (no special tokens added, special-token syntax
in the text not parsed, as llama.cpp's tokenize(parse_special=false)) and the ids concatenated.
BOS is put first only when the model asks for it (the GGUF's tokenizer.ggml.add_bos_token;
SmolLM2's says false, so its sequences start with the block's first token, as in llama.cpp).
The logits at position t score the token at t+1; log-softmax in float32 over the whole
vocabulary; L = mean over the response tokens of -log p. Context (docs/METHOD.md, "Context limit:
nothing is cut"): no sequence is ever cut. When the zero-shot sequence is longer than --ctx-size
the sample is NaN with reason `too_long`; when it fits but the one-shot sequence (the whole
example, then the sample) does not, the zero-shot loss is computed and MIWV is NaN with reason
`example_too_long`. --ctx-size auto (the default) is the model's training context
(max_position_embeddings), the limit miwv's own --ctx-size auto applies when the memory budget
allows it (run.json's context_fit.limit says what it was).

Chat-template mode (--template model: the HF directory's own chat template; --template chatml:
miwv's assets/templates/chatml.jinja; --chat-template FILE: any Jinja template): each sample is a
conversation, [system] then each turn's user prompt and assistant response, rendered whole by
transformers' apply_chat_template (add_generation_prompt=False) and tokenised segment-wise by
chat_segments.py (markup with special tokens parsed, message contents as plain text). No BOS is
added beyond what the template writes. The zero-shot sequence is the sample's conversation; the
one-shot sequence is the neighbour's messages followed by the target's, rendered as one
conversation. Scored: the tokens of the target's assistant contents, all turns pooled into one
mean (with --append-eos also the first token of the markup after each non-empty one). The
context rule is the same: `too_long` and `example_too_long`, nothing cut.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chat_segments  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent
CHAT_TEMPLATES = {"chatml": REPO / "assets" / "templates" / "chatml.jinja"}  # besides `model`

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


def prompt_text(turn: dict) -> str:
    """The user's text of a turn: the instruction, then the input on the next line when there is
    one (miwv's Turn::prompt_text)."""
    return f"{turn['instruction']}\n{turn['input']}" if turn["input"] else turn["instruction"]


ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    **{name: "assistant" for name in ("gpt", "assistant", "model", "chatgpt", "bing", "bard")},
}


def conversation_turns(messages, where: str) -> tuple[str, list[dict]]:
    """(system message, turns) of a conversation, by miwv's rules (FastChat's): an optional
    system message first, then user and assistant alternating; assistant messages before the
    first user message and a last unanswered user message are skipped."""
    if not isinstance(messages, list):
        sys.exit(f"{where}: expected a list of messages")
    system, turns, last = "", [], None
    for n, message in enumerate(messages):
        at = f"{where}[{n}]"
        if not isinstance(message, dict):
            sys.exit(f"{at}: expected a message object")
        role_key, text_key = ("from", "value") if ("from" in message or "value" in message) else ("role", "content")
        raw_role = message.get(role_key)
        if not isinstance(raw_role, str):
            sys.exit(f"{at}.{role_key}: missing or not a string")
        role = ROLES.get(raw_role)
        if role is None:
            sys.exit(f"{at}.{role_key}: unknown role {raw_role!r} (expected system, user/human or assistant/gpt)")
        text = message.get(text_key)
        if not isinstance(text, str):
            sys.exit(f"{at}.{text_key}: missing or not a string")
        if role == "system":
            if last is not None:
                sys.exit(f"{at}.{role_key}: a system message is only allowed first")
            system = text
        elif role == "assistant" and last in (None, "system"):
            continue  # no prompt before it: not a target
        elif role == last:
            sys.exit(f"{at}.{role_key}: two messages of the same role in a row; user and assistant must alternate")
        elif role == "user":
            turns.append({"instruction": text, "input": "", "output": ""})
        else:
            turns[-1]["output"] = text
        last = role
    if last == "user":
        turns.pop()
    return system, turns


def read_records(path: Path, first_turn_only: bool = False) -> list[dict]:
    """A JSON array, or JSON Lines (blank lines skipped), of Alpaca records (`instruction`,
    `input?`, `output`) or conversations (`conversations: [{from, value}]` or
    `messages: [{role, content}]`), as miwv's dataset reader takes them. Each sample is
    {id, system, turns: [{instruction, input, output}]}."""
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
        conversation = None
        if "instruction" not in record:
            conversation = next((name for name in ("conversations", "messages") if name in record), None)
        if conversation is not None:
            system, turns = conversation_turns(record[conversation], f"{path}: record {index}: {conversation}")
        else:
            if "instruction" not in record:
                sys.exit(f"{path}: record {index}: field `instruction` missing (and no `conversations` or "
                         f"`messages` list either)")
            system = ""
            turns = [{
                "instruction": text_field("instruction", True),
                "input": text_field("input", False),
                "output": text_field("output", True),
            }]
        if first_turn_only:
            turns = turns[:1]
        samples.append({"id": sample_id, "system": system, "turns": turns})
    return samples


def chat_messages(sample: dict) -> list[dict]:
    """A sample as chat messages: its system message (if any), then each turn's prompt and response."""
    messages = [{"role": "system", "content": sample["system"]}] if sample["system"] else []
    for turn in sample["turns"]:
        messages.append({"role": "user", "content": prompt_text(turn)})
        messages.append({"role": "assistant", "content": turn["output"]})
    return messages


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
        if not sample["turns"]:
            return [], 0
        turn = sample["turns"][0]
        prompt = self.encode(render_prompt(template, turn["instruction"], turn["input"]))
        response = self.encode(turn["output"])
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


def positions_loss(model, torch, tokens: list[int], positions: list[int]) -> float:
    """Mean -log p of the tokens at `positions` (each >= 1), each from the logits of the token
    before it: the same computation as response_loss, for scored tokens that are not one run."""
    assert positions and positions[0] >= 1 and positions == sorted(set(positions))
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.inference_mode():
        keep = torch.tensor([p - 1 for p in positions], dtype=torch.long)
        out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        logits = out.logits[0].float()  # [len(positions), vocab]
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor([tokens[p] for p in positions], dtype=torch.long)
        nll = -logp.gather(1, target[:, None])[:, 0]
    return float(nll.double().mean())


class ChatSequences:
    """Chat-template mode: a conversation rendered with the template and tokenised segment-wise
    (chat_segments.py), and the positions scored in it."""

    def __init__(self, tokenizer, template: str, bos_token, eos_token, append_eos: bool):
        self.tokenizer = tokenizer
        self.template = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.append_eos = append_eos
        self.seg_tok = chat_segments.SegmentTokenizer(tokenizer)

    def render(self, messages: list[dict]) -> str:
        return chat_segments.render(self.tokenizer, messages, self.template, self.bos_token, self.eos_token)

    def sequence(self, messages: list[dict], first_target: int) -> tuple[list[int], list[int]]:
        """(token ids, scored positions): the assistant contents of messages[first_target:],
        plus with --append-eos the first token of the markup after each non-empty one.
        Raises on a template error (the template's own raise_exception, or CannotSplit)."""
        segments = chat_segments.split(self.render, messages)
        tokens, spans = self.seg_tok.layout(segments)
        ranges, end_of_turn = chat_segments.assistant_spans(segments, spans, first_target)
        positions = [p for start, end in ranges for p in range(start, end)]
        if self.append_eos:
            positions += end_of_turn
        positions = sorted(p for p in set(positions) if p >= 1)  # position 0 has no logits before it
        return tokens, positions


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



def load_model(args):
    """The float32 model, with the KV cache precision asked for; and the attention used."""
    import torch
    from transformers import AutoModelForCausalLM

    attention = "eager" if args.kv_cache == "f32" else register_f16_kv_attention(torch)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    return model, attention


def empty_row(samples, i, k):
    """A scores.jsonl row for sample i (neighbour k) with nothing computed yet, and its token dump."""
    sample = samples[i]
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
        "tokens_zero_shot": None,
        "tokens_one_shot": None,
        "turns": len(sample["turns"]),
    }
    return row, {"id": sample["id"], "index": i, "zero_shot": None, "one_shot": None}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="HF directory written by hf_from_gguf.py")
    parser.add_argument("--data", required=True, type=Path, help="JSON array or JSONL of Alpaca records {instruction, input?, output, id?} "
                             "or conversations (conversations: [{from, value}] or messages: [{role, content}])")
    parser.add_argument("--neighbours", required=True, type=Path, help="a miwv scores.jsonl for the same data")
    parser.add_argument("--template", choices=sorted(SEPARATORS) + ["model"] + sorted(CHAT_TEMPLATES), default="alpaca",
                        help="alpaca/raw: miwv's text templates; model: the HF directory's own chat template; "
                             "chatml: miwv's assets/templates/chatml.jinja")
    parser.add_argument("--chat-template", type=Path,
                        help="a Jinja chat template file (chat-template mode; overrides --template)")
    parser.add_argument("--chat-bos-token", help="bos_token given to the chat template (default: the tokenizer's)")
    parser.add_argument("--chat-eos-token", help="eos_token given to the chat template (default: the tokenizer's)")
    parser.add_argument("--chat-date", type=datetime.date.fromisoformat, default=datetime.date(2024, 7, 26),
                        help="YYYY-MM-DD: the date a chat template's strftime_now gives "
                             "(default: 2024-07-26, the date miwv pins, docs/METHOD.md)")
    parser.add_argument("--first-turn", action="store_true", help="keep only a conversation's first exchange")
    parser.add_argument("--dump-tokens", type=Path,
                        help="also write each sample's sequences as JSON lines: token ids and scored positions")
    parser.add_argument("--ctx-size", default="auto",
                        help="longest sequence in tokens (miwv's -c; run.json's context_fit.limit); "
                             "auto: the model's training context")
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
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    chat = args.chat_template is not None or args.template not in SEPARATORS
    if args.ctx_size == "auto":
        config = json.loads((args.model / "config.json").read_text())
        args.ctx_size = int(config["max_position_embeddings"])
    else:
        args.ctx_size = int(args.ctx_size)
    samples = read_records(args.data, args.first_turn)
    neighbours = read_neighbours(args.neighbours, samples)
    if not chat:
        for i, sample in enumerate(samples):
            if len(sample["turns"]) > 1 or sample["system"]:
                sys.exit(f"{args.data}: sample {sample['id']!r} (index {i}) is a conversation with a system "
                         f"message or several turns; score it with a chat template (--template model, "
                         f"--template chatml or --chat-template FILE)")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if chat:
        main_chat(args, torch, tokenizer, samples, neighbours)
        return
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

    model, attention = load_model(args)
    print(
        f"model {args.model} ({model.config.model_type}, vocab {model.config.vocab_size}), BOS "
        f"{'id ' + str(bos_id) if add_bos else 'none'}, template {args.template}, SEP ids {sep}, "
        f"ctx {args.ctx_size}, attention {attention}, {args.threads} threads",
        file=sys.stderr,
    )

    blocks = [tok.block(args.template, s) for s in samples]
    count = len(samples) if args.limit is None else min(args.limit, len(samples))
    rows = []
    dumps = []
    started = time.time()
    scored_tokens = 0
    for i in range(count):
        sample = samples[i]
        block_i, prompt_len_i = blocks[i]
        k = neighbours[i]
        row, dump = empty_row(samples, i, k)
        base = len(tok.prefix) + len(block_i)
        row["tokens_zero_shot"] = base
        if len(block_i) == prompt_len_i or base < 2:
            row["reason"] = "empty_response"
        elif base > args.ctx_size:
            row["reason"] = "too_long"
        else:
            zero = tok.prefix + block_i
            zero_start = len(tok.prefix) + prompt_len_i
            row["loss_zero_shot"] = response_loss(model, torch, zero, zero_start)
            row["response_tokens"] = len(block_i) - prompt_len_i
            row["prompt_tokens_zero_shot"] = zero_start
            dump["zero_shot"] = {"tokens": zero, "scored": list(range(zero_start, len(zero)))}
            scored_tokens += len(zero)
            if k is None:
                row["reason"] = "no_neighbour"
            else:
                one = list(tok.prefix) + blocks[k][0] + sep
                one_start = len(one) + prompt_len_i
                one += block_i
                row["tokens_one_shot"] = len(one)
                assert one[one_start:] == zero[zero_start:]
                if len(one) > args.ctx_size:
                    row["reason"] = "example_too_long"
                else:
                    row["loss_one_shot"] = response_loss(model, torch, one, one_start)
                    row["prompt_tokens_one_shot"] = one_start
                    row["miwv"] = row["loss_one_shot"] - row["loss_zero_shot"]
                    dump["one_shot"] = {"tokens": one, "scored": list(range(one_start, len(one)))}
                    scored_tokens += len(one)
        dumps.append(dump)
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

    write_outputs(args, rows, dumps)
    print(f"wrote {args.out}: {len(rows)} samples, {scored_tokens} tokens in {time.time() - started:.1f}s", file=sys.stderr)


def write_jsonl(path: Path, items: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_outputs(args, rows: list[dict], dumps: list[dict]) -> None:
    write_jsonl(args.out, rows)
    if args.dump_tokens is not None:
        write_jsonl(args.dump_tokens, dumps)


def main_chat(args, torch, tokenizer, samples: list[dict], neighbours: list[int | None]) -> None:
    """Chat-template mode (see the module docstring)."""
    if args.bos == "on":
        sys.exit("--bos on does not apply with a chat template: the sequence starts with what the template writes")
    if args.chat_template is not None:
        template, template_name = args.chat_template.read_text(encoding="utf-8"), str(args.chat_template)
    elif args.template == "model":
        template, template_name = tokenizer.chat_template, f"{args.model} (its own)"
        if not template:
            sys.exit(f"{args.model}: the tokenizer has no chat template; pass --chat-template FILE")
    else:
        path = CHAT_TEMPLATES[args.template]
        template, template_name = path.read_text(encoding="utf-8"), str(path)
    bos_token = args.chat_bos_token if args.chat_bos_token is not None else tokenizer.bos_token
    eos_token = args.chat_eos_token if args.chat_eos_token is not None else tokenizer.eos_token
    chat = ChatSequences(tokenizer, template, bos_token, eos_token, args.append_eos)
    chat_segments.pin_strftime_now(args.chat_date)

    model, attention = load_model(args)
    print(
        f"model {args.model} ({model.config.model_type}, vocab {model.config.vocab_size}), chat template "
        f"{template_name}, bos_token {bos_token!r}, eos_token {eos_token!r}, no BOS added, ctx {args.ctx_size}, "
        f"attention {attention}, {args.threads} threads",
        file=sys.stderr,
    )

    messages = [chat_messages(sample) for sample in samples]
    count = len(samples) if args.limit is None else min(args.limit, len(samples))
    rows, dumps = [], []
    started = time.time()
    scored_tokens = 0
    skipped = 0
    for i in range(count):
        sample = samples[i]
        k = neighbours[i]
        row, dump = empty_row(samples, i, k)
        try:
            zero, zero_scored = chat.sequence(messages[i], 0)
        except Exception as e:  # noqa: BLE001 - a template error is reported on the sample's row
            zero, zero_scored = None, None
            row["skipped"] = f"template: {type(e).__name__}: {e}"
        if zero is not None:
            row["tokens_zero_shot"] = len(zero)
        if zero is None:
            pass
        elif not zero_scored or len(zero) < 2:
            row["reason"] = "empty_response"
        elif len(zero) > args.ctx_size:
            row["reason"] = "too_long"
        else:
            row["loss_zero_shot"] = positions_loss(model, torch, zero, zero_scored)
            row["response_tokens"] = len(zero_scored)
            row["prompt_tokens_zero_shot"] = zero_scored[0]
            dump["zero_shot"] = {"tokens": zero, "scored": zero_scored}
            scored_tokens += len(zero)
            if k is None:
                row["reason"] = "no_neighbour"
            else:
                try:
                    one, one_scored = chat.sequence(messages[k] + messages[i], len(messages[k]))
                except Exception as e:  # noqa: BLE001
                    one, one_scored = None, None
                    row["skipped"] = f"template (one-shot): {type(e).__name__}: {e}"
                if one is not None:
                    row["tokens_one_shot"] = len(one)
                if one is None:
                    pass
                elif len(one) > args.ctx_size:
                    row["reason"] = "example_too_long"
                else:
                    if [one[p] for p in one_scored] != [zero[p] for p in zero_scored]:
                        print(f"warning: sample {sample['id']}: the scored tokens differ between the zero-shot "
                              f"and one-shot renders", file=sys.stderr)
                    row["loss_one_shot"] = positions_loss(model, torch, one, one_scored)
                    row["prompt_tokens_one_shot"] = one_scored[0]
                    row["miwv"] = row["loss_one_shot"] - row["loss_zero_shot"]
                    dump["one_shot"] = {"tokens": one, "scored": one_scored}
                    scored_tokens += len(one)
        for key in ("miwv", "loss_zero_shot", "loss_one_shot"):
            if row[key] is not None and not math.isfinite(row[key]):
                row[key] = None
        skipped += "skipped" in row
        rows.append(row)
        dumps.append(dump)
        elapsed = time.time() - started
        shown = "null" if row["miwv"] is None else f"{row['miwv']:+.4f}"
        why = row["reason"] or row.get("skipped")
        print(
            f"[{i + 1}/{count}] {sample['id']}: miwv {shown}{' (' + why + ')' if why else ''}  "
            f"{scored_tokens / max(elapsed, 1e-9):.0f} tok/s, {elapsed:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    write_outputs(args, rows, dumps)
    note = f", {skipped} skipped (see their `skipped` field)" if skipped else ""
    print(f"wrote {args.out}: {len(rows)} samples{note}, {scored_tokens} tokens in {time.time() - started:.1f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
