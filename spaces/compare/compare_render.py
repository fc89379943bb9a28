"""Rendering of the compare Space: one question's texts as Markdown the page shows side by side.

Math stays math (KaTeX through Gradio's `latex_delimiters`; a bare `\\boxed{}` is put in `$…$`), the
format's tags (`<|begin_of_thought|>` …) are hidden unless asked for, the words where the left and
right explanations differ are marked (a word-level difflib diff, math spans compared whole), and each
reward component gets its one-line meaning. Pure text in, text out: no Gradio, no `factory` import.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
]
TAG = re.compile(r"<\|[^|<>\s]+\|>")
# A token is a whole math span (never cut by a mark, so KaTeX still sees it) or a run of non-space characters.
MATH = r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$[^$\n]+?\$"
MATH_SPAN = re.compile(f"({MATH})", re.S)
TOKEN = re.compile(f"{MATH}|\\S+", re.S)
WORDLIKE = re.compile(r"\w")  # marked tokens: words and math, not Markdown's list/heading/table marks


def component_notes(names: list[str], notes: dict[str, str]) -> str:
    """`reward` and the given component names, one line each, as Markdown, each with what it measures where
    the data's factory metadata says (`columns`, written by the reward that scored it: factory.rewards)."""
    lines = [f"- **{name}**" + (f": {notes[name]}" if notes.get(name) else "") for name in ["reward", *names]]
    return "**What the numbers mean**\n\n" + "\n".join(lines)


def math_markdown(text: str) -> str:
    """Text with each bare `\\boxed{...}` (outside the math spans) put in `$...$`, so KaTeX renders it.

    Text between math spans that holds a lone `$` is left as written: a `$` added there could pair
    with it and turn the prose between them into math."""
    parts = MATH_SPAN.split(text)  # odd parts are the math spans
    return "".join(p if k % 2 or "$" in p else _boxed_math(p) for k, p in enumerate(parts))


def _boxed_math(text: str) -> str:
    out, start = [], 0
    while (begin := text.find("\\boxed{", start)) >= 0:
        depth, end = 0, begin + len("\\boxed")
        for end in range(begin + len("\\boxed"), len(text)):  # noqa: B007 - `end` is read after the loop
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        out += [text[start:begin], "$", text[begin : end + 1], "$"]
        start = end + 1
    return "".join(out) + text[start:]


def tags(text: str, shown: bool) -> str:
    """The format's tags removed, or shown as code (Markdown would otherwise drop `<|…|>` as HTML)."""
    return TAG.sub(lambda m: f"`{m.group(0)}`" if shown else "", text)


def diff_marks(mine: str, other: str) -> str:
    """`mine` with `<mark>` around the words and math spans that `other` lacks (a word-level diff).

    A run of marked tokens on one line is one mark; marks never cross a line, so Markdown's paragraphs,
    lists and display math keep their structure."""
    found, their_found = list(TOKEN.finditer(mine)), list(TOKEN.finditer(other))
    spans, words = [(m.start(), m.end()) for m in found], [m.group(0) for m in found]
    theirs = [m.group(0) for m in their_found]
    marked = _changed(theirs, _sentences(their_found, other), words, _sentences(found, mine))
    out, at, open_run = [], 0, False
    for (a, b), word, mark in zip(spans, words, marked, strict=True):
        gap = mine[at:a]
        if open_run and (not mark or "\n" in gap):
            out.append("</mark>")
            open_run = False
        out.append(gap)
        if mark and not open_run:
            out.append("<mark>")
            open_run = True
        out.append(word)
        at = b
    return "".join(out) + ("</mark>" if open_run else "") + mine[at:]


def _sentences(found: list[re.Match], text: str) -> list[int]:
    """Where each sentence starts, as token indices: after a token ending in . ? ! : or before a line break."""
    starts = [0]
    for k, match in enumerate(found[:-1]):
        if match.group(0)[-1] in ".?!:" or "\n" in text[match.end() : found[k + 1].start()]:
            starts.append(k + 1)
    return starts


def _changed(theirs: list[str], their_starts: list[int], words: list[str], starts: list[int]) -> list[bool]:
    """Which of `words` `theirs` lacks (tokens, with their sentences' starts): sentences are matched
    first, then words only inside the sentences that differ, which keeps a Stratos-length pair (thousands
    of words) well under a second where one word-level pass over both takes seconds."""
    bounds = lambda st, n: list(zip(st, [*st[1:], n]))  # noqa: E731
    mine, other = bounds(starts, len(words)), bounds(their_starts, len(theirs)) if theirs else []
    key = lambda tokens, span: " ".join(tokens[span[0] : span[1]])  # noqa: E731
    marked = [False] * len(words)
    outer = difflib.SequenceMatcher(
        None, [key(theirs, s) for s in other], [key(words, s) for s in mine], autojunk=False
    )
    for op, i1, i2, j1, j2 in outer.get_opcodes():
        if op == "equal" or j1 == j2:
            continue
        lo, hi = mine[j1][0], mine[j2 - 1][1]
        old = theirs[other[i1][0] : other[i2 - 1][1]] if i1 < i2 else []
        inner = difflib.SequenceMatcher(None, old, words[lo:hi], autojunk=len(old) + hi - lo > 1000)
        for op2, _, _, k1, k2 in inner.get_opcodes():
            if op2 != "equal":
                for k in range(lo + k1, lo + k2):
                    marked[k] = bool(WORDLIKE.search(words[k]))
    return marked


def explanation_markdown(text: str, other: str | None = None, show_tags: bool = False) -> str:
    """One explanation as the page shows it; with `other`, its differences from `other` marked."""
    mine = math_markdown(tags(text, show_tags))
    return mine if other is None else diff_marks(mine, math_markdown(tags(other, show_tags)))


def question_markdown(view: dict[str, Any]) -> str:
    question, solution = math_markdown(view["question"]), math_markdown(view["solution"])
    return f"### Question `{view['id']}`\n\n{question}\n\n#### Reference solution\n\n{solution}"


def _number(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def metrics_markdown(panel: dict[str, Any], role: str = "") -> str:
    """The header of one source column: reward, its components, length, closure, student result."""
    names = ("reward", *panel["components"])
    values = [panel["reward"], *panel["components"].values()]
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    row = "| " + " | ".join(f"**{_number(v)}**" if i == 0 else _number(v) for i, v in enumerate(values)) + " |"
    correct = {True: "✓ student right", False: "✗ student wrong"}.get(
        None if panel["student_correct"] is None else bool(panel["student_correct"]), "student result not recorded"
    )
    facts = [f"{panel['tokens']} tokens" if panel["tokens"] is not None else None, f"{panel['chars']} characters"]
    if panel["closed"] is not None:
        facts.append("closed" if panel["closed"] else "**not closed**")
    if panel["finish_reason"]:
        facts.append(f"finish: {panel['finish_reason']}")
    facts += [f"**{flag}**" for flag in panel["flags"]]
    facts.append(correct)
    title = f"### {panel['label']}" + (f" · {role}" if role else "")
    return f"{title}\n\n{head}{row}\n\n" + " · ".join(f for f in facts if f)
