"""Gradio Space: compare teachers' explanations side by side.

A thin layout over compare_data.py (alignment), compare_render.py (Markdown) and compare_votes.py. Runs as
a Hugging Face Space (`python app.py`, sources from the `SOURCES` variable or `sources.json` beside this file)
and from `factory compare SOURCE ...`. The browser only ever receives one question or one overview page: the
data stays on the server. `?q=<id>` (with `&left=&right=` for another pair) opens one question: the link a
reader cites.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_data as cd  # noqa: E402
import compare_render as cr  # noqa: E402
import compare_votes as cv  # noqa: E402

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 25
DIFF, TAGS = "mark where left and right differ", "show the format's tags"
CSS = (
    ".explanation {border-top: 1px solid var(--border-color-primary); padding-top: 8px}\n"
    ".explanation mark {background: #fde68a; color: inherit; padding: 0 1px; border-radius: 2px}"
)


def configured() -> dict[str, Any]:
    """The Space's settings: env SOURCES (one per line or comma-separated) wins over sources.json."""
    settings: dict[str, Any] = {}
    file = HERE / "sources.json"
    if file.is_file():
        settings = json.loads(file.read_text())
    env = os.environ.get("SOURCES", "").replace(",", "\n")
    if env.strip():
        settings["sources"] = [line.strip() for line in env.splitlines() if line.strip()]
    settings["votes_repo"] = os.environ.get("VOTES_REPO") or settings.get("votes_repo")
    settings["votes_file"] = os.environ.get("VOTES_FILE") or settings.get("votes_file") or "votes.jsonl"
    return settings


def build_app(
    comparison: cd.Comparison, votes: cv.VoteStore, votes_repo: str | None = None, title: str | None = None
) -> gr.Blocks:
    """The page: shared search/sort/pair controls, then Question, Overview, Distributions and Votes tabs."""
    labels = comparison.labels
    pair = [(label, index) for index, label in enumerate(labels)]

    def order(view: dict, left: int, right: int) -> np.ndarray:
        return comparison.order(view["query"], view["sort"], int(left), int(right))

    def render(view: dict, left: int, right: int, show: list[str], delta: int = 0) -> list[Any]:
        """Show the question `view["index"]` moved by `delta` within the current order."""
        left, right = int(left), int(right)
        walk = order(view, left, right)
        if not len(walk):
            blank = [""] * (2 * len(labels))
            return [{**view, "index": -1}, f"no question matches “{view['query']}”", "", *blank, "", ""]
        at = np.flatnonzero(walk == view["index"])
        step = int(at[0]) + delta if len(at) else 0
        step = min(max(step, 0), len(walk) - 1)
        view = {**view, "index": int(walk[step])}
        shown = comparison.question(view["index"])
        roles = {left: "left", right: "right"} if left != right else {}
        columns = [*roles, *(i for i in range(len(labels)) if i not in roles)]  # the left source on the left
        metrics = [cr.metrics_markdown(shown["panels"][i], roles.get(i, "")) for i in columns]
        texts = [p["explanation"] for p in shown["panels"]]
        against = {left: texts[right], right: texts[left]} if roles and DIFF in show else {}
        explanations = [cr.explanation_markdown(texts[i], against.get(i), TAGS in show) for i in columns]
        previous = votes.vote_for(shown["id"], comparison.sources[left].ref, comparison.sources[right].ref)
        position = f"**{step + 1}** / {len(walk)}" + (f" matching “{view['query']}”" if view["query"] else "")
        link = (
            view["link"]
            + f"?q={quote(shown['id'])}"
            + (f"&left={left}&right={right}" if (left, right) != comparison.pair else "")
        )
        return [view, position, cr.question_markdown(shown), *metrics, *explanations, _vote_line(previous), link]

    def overview(view: dict, left: int, right: int, page: float | None, delta: int = 0) -> list[Any]:
        page = int(page or 1) + delta
        table, page, pages, total = comparison.overview(
            view["query"], view["sort"], int(left), int(right), page, PAGE_SIZE
        )
        return [table, page, f"page {page} / {pages} · {total} questions"]

    def jump(qid: str, view: dict, left: int, right: int, show: list[str]) -> list[Any]:
        index = comparison.position(qid)
        if index is None:
            gr.Warning(f"no question with id {qid!r} in all sources")
            return [view["query"], *render(view, left, right, show)]
        view = {**view, "index": index}
        if index not in order(view, left, right):
            view["query"] = ""  # the id is outside the search: show it in the full order
        return [view["query"], *render(view, left, right, show)]

    def opened(view: dict, show: list[str], request: gr.Request) -> list[Any]:
        """Page load: the question and pair a link names (`?q=<id>&left=<i>&right=<j>`), else the first."""
        params = dict(request.query_params) if request else {}
        view = {**view, "link": _page_link(request)}
        left, right = (
            _index(params.get(key), default, len(labels)) for key, default in zip(("left", "right"), comparison.pair)
        )
        shown = jump(params["q"], view, left, right, show)[1:] if params.get("q") else render(view, left, right, show)
        return [left, right, *shown, *overview(shown[0], left, right, 1)]

    def search(query: str, sort: str, view: dict, left: int, right: int, show: list[str]) -> list[Any]:
        view = {**view, "query": query or "", "sort": sort}
        return [*render(view, left, right, show), *overview(view, left, right, 1)]

    def pick_row(view: dict, left: int, right: int, show: list[str], event: gr.SelectData) -> list[Any]:
        return [gr.Tabs(selected="question"), *jump(str(event.row_value[1]), view, left, right, show)]

    def vote(kind: str, view: dict, left: int, right: int) -> list[Any]:
        left, right = int(left), int(right)
        if left == right or view["index"] < 0:
            gr.Warning("choose two different sources as left and right, and a question, to vote")
            return [_vote_line(None), _votes_summary(votes)]
        votes.record(comparison, view["index"], left, right, kind)
        return [_vote_line(kind, saved=True), _votes_summary(votes)]

    def publish() -> str:
        try:
            result = cv.publish_votes(votes, votes_repo)
        except ValueError as exc:  # no votes yet
            return str(exc)
        return f"published {result['pairs']} preference pairs and {result['votes']} votes to `{votes_repo}`"

    with gr.Blocks(title=title or "Compare teachers' explanations", analytics_enabled=False) as demo:
        view = gr.State({"query": "", "sort": "disagreement", "index": -1, "link": ""})  # -1: first of the order
        gr.Markdown(f"# {title or 'Compare teachers’ explanations'}\n\n{_sources_markdown(comparison)}")
        with gr.Row():
            query_box = gr.Textbox(label="search id, question, explanations", scale=3, elem_id="search")
            sort_box = gr.Dropdown(
                [(text, key) for key, text in cd.SORTS.items()], value="disagreement", label="order", scale=2
            )
            left_box = gr.Dropdown(pair, value=comparison.pair[0], label="left", scale=1, elem_id="left")
            right_box = gr.Dropdown(pair, value=comparison.pair[1], label="right", scale=1, elem_id="right")
        with gr.Tabs() as tabs:
            with gr.Tab("Question", id="question"):
                with gr.Row(equal_height=True):
                    prev_btn = gr.Button("◀ previous", scale=1, elem_id="prev")
                    next_btn = gr.Button("next ▶", scale=1, elem_id="next")
                    position = gr.Markdown(elem_id="position")
                    id_box = gr.Textbox(label="go to id", scale=2, elem_id="jump-id")
                    go_btn = gr.Button("go", scale=1, elem_id="jump")
                with gr.Row(equal_height=True):
                    show_box = gr.CheckboxGroup([DIFF, TAGS], value=[DIFF], show_label=False, scale=2, elem_id="show")
                    link_box = gr.Textbox(
                        label="link to this question", buttons=["copy"], interactive=False, scale=3, elem_id="permalink"
                    )
                question = gr.Markdown(
                    latex_delimiters=cr.LATEX_DELIMITERS,
                    elem_id="question",
                    container=True,
                    padding=True,
                    line_breaks=True,
                )
                metrics, explanations = [], []
                with gr.Row(equal_height=False):
                    for index in range(len(labels)):
                        with gr.Column():
                            metrics.append(gr.Markdown(elem_id=f"metrics-{index}"))
                            explanations.append(
                                gr.Markdown(
                                    latex_delimiters=cr.LATEX_DELIMITERS,
                                    elem_id=f"explanation-{index}",
                                    elem_classes="explanation",
                                    max_height=700,
                                    line_breaks=True,
                                )
                            )
                with gr.Row():
                    vote_buttons = {
                        "left": gr.Button("◀ left is better", elem_id="vote-left"),
                        "tie": gr.Button("tie", elem_id="vote-tie"),
                        "right": gr.Button("right is better ▶", elem_id="vote-right"),
                    }
                vote_status = gr.Markdown(elem_id="vote-status")
                gr.Markdown(cr.component_notes(comparison.components, comparison.notes), elem_id="components")
            with gr.Tab("Overview", id="overview"):
                with gr.Row(equal_height=True):
                    page_prev = gr.Button("◀ page", scale=1)
                    page_box = gr.Number(value=1, precision=0, minimum=1, label="page", scale=1)
                    page_next = gr.Button("page ▶", scale=1)
                    page_info = gr.Markdown(elem_id="page-info")
                table = gr.Dataframe(interactive=False, elem_id="overview", wrap=True)
            with gr.Tab("Distributions", id="distributions"):
                gr.Plot(comparison.figure("reward"), label="reward per source")
                gr.Plot(comparison.figure("length"), label="explanation length per source")
                gr.Dataframe(comparison.summary(), interactive=False, label="per source")
            with gr.Tab("Votes", id="votes"):
                votes_info = gr.Markdown(_votes_summary(votes), elem_id="votes-info")
                publish_btn = gr.Button(
                    f"publish votes to {votes_repo}", visible=bool(votes_repo), elem_id="publish-votes"
                )
                publish_info = gr.Markdown(elem_id="publish-info")

        pair_in, state_in = [left_box, right_box], [view, left_box, right_box, show_box]
        shown = [view, position, question, *metrics, *explanations, vote_status, link_box]
        page_out = [table, page_box, page_info]
        demo.load(opened, [view, show_box], [*pair_in, *shown, *page_out])
        prev_btn.click(lambda v, a, b, s: render(v, a, b, s, -1), state_in, shown, api_name="previous")
        next_btn.click(lambda v, a, b, s: render(v, a, b, s, +1), state_in, shown, api_name="next")
        show_box.input(render, state_in, shown, api_name="show")
        for trigger in (go_btn.click, id_box.submit):
            trigger(jump, [id_box, *state_in], [query_box, *shown], api_name="go_to")
        for trigger in (query_box.submit, sort_box.input, left_box.input, right_box.input):
            trigger(search, [query_box, sort_box, *state_in], shown + page_out, api_name="search")
        page_prev.click(
            lambda v, a, b, p: overview(v, a, b, p, -1), [view, *pair_in, page_box], page_out, api_name="page_previous"
        )
        page_next.click(
            lambda v, a, b, p: overview(v, a, b, p, +1), [view, *pair_in, page_box], page_out, api_name="page_next"
        )
        page_box.submit(overview, [view, *pair_in, page_box], page_out, api_name="page")
        table.select(pick_row, state_in, [tabs, query_box, *shown])
        for kind, button in vote_buttons.items():
            button.click(
                lambda v, a, b, kind=kind: vote(kind, v, a, b),
                [view, *pair_in],
                [vote_status, votes_info],
                api_name=f"vote_{kind}",
            )
        publish_btn.click(publish, None, publish_info, api_name="publish_votes")
    return demo


def _page_link(request: gr.Request | None) -> str:
    """The address a reader shares: the Space's Hub page on a Space (it passes `?q=` on to the app), else
    the page the browser shows, without its query."""
    if os.environ.get("SPACE_ID"):
        return f"https://huggingface.co/spaces/{os.environ['SPACE_ID']}"
    page = (request.headers.get("referer") if request else None) or ""
    return page.split("?")[0].split("#")[0]


def _index(value: str | None, default: int, count: int) -> int:
    """A source index from the link; a missing or out-of-range one is the default."""
    return int(value) if value and value.isdigit() and int(value) < count else default


def _vote_line(vote: str | None, saved: bool = False) -> str:
    words = {"left": "left is better", "right": "right is better", "tie": "tie"}
    if vote is None:
        return "no vote yet for this question and pair"
    return f"{'saved' if saved else 'your vote'}: **{words[vote]}**"


def _votes_summary(votes: cv.VoteStore) -> str:
    latest = votes.latest()
    counts = {kind: sum(v["vote"] == kind for v in latest) for kind in cv.VOTES}
    return (
        f"{len(latest)} votes in `{votes.path}`: {counts['left']} left better, {counts['right']} right better, "
        f"{counts['tie']} ties ({len(cv.preference_rows(latest))} preference pairs)"
    )


def _sources_markdown(comparison: cd.Comparison) -> str:
    lines = [f"{len(comparison)} questions present in all {len(comparison.sources)} sources, aligned by id."]
    for source in comparison.sources:
        extra = comparison.missing[source.label]
        lines.append(
            f"- **{source.label}**: {source.detail}"
            + (f" ({extra} row{'s' if extra != 1 else ''} not in every source)" if extra else "")
        )
    if comparison.mismatched:
        lines.append(f"\n⚠ {comparison.mismatched} aligned rows have a different question text than the first source.")
    return "\n".join(lines)


def unconfigured_app() -> gr.Blocks:
    """What the Space shows before anyone lists its sources: how to list them."""
    with gr.Blocks(title="Compare teachers' explanations", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Compare teachers’ explanations\n\nNo sources are configured. Set the Space variable `SOURCES` "
            "to two or more trace datasets, one per line, as `owner/name@revision` (optionally `label=owner/name@revision`), "
            'or add a `sources.json` (`{"sources": [...]}`) beside app.py.'
        )
    return demo


def main() -> None:
    settings = configured()
    if not settings.get("sources"):
        unconfigured_app().launch(ssr_mode=False)
        return
    comparison = cd.load_comparison(settings["sources"])
    demo = build_app(comparison, cv.VoteStore(settings["votes_file"]), settings["votes_repo"], settings.get("title"))
    demo.launch(ssr_mode=False, css=CSS)


if __name__ == "__main__":
    main()
