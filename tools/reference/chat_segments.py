"""Segment-wise tokenisation of a conversation rendered with a Jinja chat template, as miwv does
it, computed with Hugging Face transformers and independently of the Rust code.

The rendered text is split into alternating template markup and message contents:

  1. the conversation is rendered with transformers' `apply_chat_template` (tokenize=False,
     add_generation_prompt=False), the real text;
  2. it is rendered again with every content replaced by a unique sentinel (`MIWVSENTINEL<j>X`),
     which gives the markup M0 .. Mn around the contents the template emits (a message whose
     sentinel does not appear was left out by the template; a sentinel that appears twice, or
     out of order, makes the split impossible);
  3. the real text is walked: M0, then message j's content as the template emitted it (the
     content, content.strip(), content.lstrip() or content.rstrip(): the first that lets the
     walk go on; templates such as Llama 3's and Gemma's `trim` the content), then the next
     markup, and so on to the end, which must be exactly the last markup.

Markup is tokenised with special-token syntax parsed (`<|im_start|>` is one token), each content
as plain text (special-token syntax not parsed, so a message holding `<|im_end|>` stays text),
no BOS/EOS added by the tokenizer, and the ids are concatenated. The scored tokens of a
conversation are those of its assistant contents.

Used by chat_fixtures.py (the committed test fixtures) and reference.py (chat-template mode).
"""

from __future__ import annotations

import datetime as _dt

SENTINEL = "MIWVSENTINEL{}X"

# How a content may appear in the render, in the order they are tried.
TRIMS = (
    ("none", lambda s: s),
    ("both", lambda s: s.strip()),
    ("left", lambda s: s.lstrip()),
    ("right", lambda s: s.rstrip()),
)


class CannotSplit(Exception):
    """The render cannot be split into markup and the message contents."""


def pin_strftime_now(date: _dt.date) -> None:
    """Make the `strftime_now` that transformers gives chat templates print `date` (at 00:00),
    so templates that write today's date (Llama 3.2's) render the same on any day."""
    from transformers.utils import chat_template_utils

    fixed = _dt.datetime(date.year, date.month, date.day)

    class PinnedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ARG003 - same signature as datetime.now
            return fixed

    # The template global calls the module's `datetime.now()` each time it runs.
    chat_template_utils.datetime = PinnedDatetime


def render(tokenizer, messages: list[dict], template: str, bos_token, eos_token) -> str:
    """The conversation as transformers renders it (no generation prompt)."""
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=False,
        chat_template=template,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def split(render_fn, messages: list[dict], text: str | None = None) -> list[dict]:
    """Segments of the render of `messages`: dicts {kind, text, message, role, trim}, markup and
    content alternating, starting and ending with markup (possibly empty). `render_fn(messages)`
    renders a conversation; `text` is the real render when the caller already has it.
    Exceptions from rendering the real conversation propagate; CannotSplit when no split exists."""
    if text is None:
        text = render_fn(messages)
    sentinels = [SENTINEL.format(j) for j in range(len(messages))]
    try:
        probe = render_fn([{"role": m["role"], "content": s} for m, s in zip(messages, sentinels)])
    except Exception as e:  # noqa: BLE001 - any failure of the probe means no split
        raise CannotSplit(f"cannot split: the render with sentinel contents failed: {e}") from e

    present: list[tuple[int, int]] = []  # (position in probe, message index)
    for j, s in enumerate(sentinels):
        count = probe.count(s)
        if count > 1:
            raise CannotSplit(f"cannot split: message {j}'s content appears {count} times")
        if count == 1:
            present.append((probe.index(s), j))
    if [p for p, _ in present] != sorted(p for p, _ in present):
        raise CannotSplit("cannot split: the template emits the contents out of order")

    markups: list[str] = []
    cursor = 0
    for pos, j in present:
        markups.append(probe[cursor:pos])
        cursor = pos + len(sentinels[j])
    markups.append(probe[cursor:])

    # Walk the real text; depth-first over the trim forms, in order, so the first form that
    # lets the whole walk succeed is taken for each content.
    def walk(k: int, at: int) -> list[tuple[str, str]] | None:
        if k == len(present):
            return [] if text[at:] == markups[k] else None
        if not text.startswith(markups[k], at):
            return None
        at += len(markups[k])
        content = messages[present[k][1]]["content"]
        tried = set()
        for name, trim in TRIMS:
            form = trim(content)
            if form in tried or not text.startswith(form, at):
                continue
            tried.add(form)
            rest = walk(k + 1, at + len(form))
            if rest is not None:
                return [(name, form)] + rest
        return None

    if not text.startswith(markups[0]):
        raise CannotSplit("cannot split: the render does not start with the markup before the first content")
    forms = walk(0, 0)
    if forms is None:
        raise CannotSplit("cannot split: the render does not match the markup around the contents")

    segments = []
    for k, (_, j) in enumerate(present):
        segments.append({"kind": "markup", "text": markups[k], "message": None, "role": None, "trim": None})
        name, form = forms[k]
        segments.append(
            {"kind": "content", "text": form, "message": j, "role": messages[j]["role"], "trim": name}
        )
    segments.append({"kind": "markup", "text": markups[-1], "message": None, "role": None, "trim": None})
    assert "".join(s["text"] for s in segments) == text
    return segments


def dropped_messages(segments: list[dict], n_messages: int) -> list[int]:
    """Messages whose content the template did not emit."""
    shown = {s["message"] for s in segments if s["kind"] == "content"}
    return [j for j in range(n_messages) if j not in shown]


class SegmentTokenizer:
    """Tokenises segments as miwv does, with a cache (the same texts recur across samples)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[tuple[str, str], list[int]] = {}

    def encode(self, kind: str, text: str) -> list[int]:
        if text == "":
            return []
        key = (kind, text)
        ids = self.cache.get(key)
        if ids is None:
            if kind == "markup":
                # Special-token syntax parsed: "<|im_start|>" in the template's markup is one token.
                ids = self.tokenizer.encode(text, add_special_tokens=False)
            else:
                # Plain text: "<|im_end|>" inside a message stays text.
                ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            self.cache[key] = list(ids)
        return list(ids)

    def layout(self, segments: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
        """(token ids, [start, end) of each segment)."""
        tokens: list[int] = []
        spans = []
        for seg in segments:
            ids = self.encode(seg["kind"], seg["text"])
            spans.append((len(tokens), len(tokens) + len(ids)))
            tokens += ids
        return tokens, spans


def assistant_spans(
    segments: list[dict], spans: list[tuple[int, int]], first_message: int = 0
) -> tuple[list[tuple[int, int]], list[int]]:
    """The [start, end) token range of every non-empty assistant content of message index >=
    `first_message`, and for each the position of the first token of the markup that follows it
    (the end-of-turn token `--append-eos` scores), when that markup has a token."""
    ranges = []
    end_of_turn = []
    for n, seg in enumerate(segments):
        if seg["kind"] != "content" or seg["role"] != "assistant" or seg["message"] < first_message:
            continue
        start, end = spans[n]
        if start == end:
            continue
        ranges.append((start, end))
        after = segments[n + 1] if n + 1 < len(segments) else None
        if after is not None and after["kind"] == "markup" and spans[n + 1][1] > spans[n + 1][0]:
            end_of_turn.append(spans[n + 1][0])
    return ranges, end_of_turn
