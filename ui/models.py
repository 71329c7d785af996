"""Models in the studio: the Model dropdown of each tool tab, and the System tab's list of every tool's model with a
download button for each hub model not downloaded yet."""

from __future__ import annotations

import html
import re

import gradio as gr

from pipelines.models import catalog, hub
from quantization.units import size_text

from .settings import DOWNLOAD_QUEUE

HIDDEN = dict(queue=False, api_visibility="private", show_progress="hidden")


def dropdown_choices(runner, tool: str) -> list[tuple[str, str]]:
    return [(choice.label, choice.value) for choice in runner.model_choices(tool)]


def model_picker(ctx, tool: str) -> gr.Dropdown:
    """The tab's Model dropdown: the studio's model for ``tool`` first, its official model, the demo model, and the
    models of FLUXFORGE_MODEL_DIR that fit it (listed afresh whenever the list is opened)."""
    runner = ctx.runner
    picker = gr.Dropdown(dropdown_choices(runner, tool), value=runner.model_for(tool), label="Model",
                         info=f"the official model (downloaded on first use), the demo model, or your own in "
                              f"{catalog.model_dir()} (FLUXFORGE_MODEL_DIR)",
                         elem_id=f"{tool}-model", allow_custom_value=True, interactive=True)
    picker.focus(lambda value: gr.update(choices=dropdown_choices(runner, tool), value=value), picker, picker,
                 **HIDDEN)
    return picker


def follow_tool(runner, tool: str) -> dict:
    """The Model dropdown's update when the tab switches to ``tool`` (Generate's schnell/dev, a control LoRA on Dev)."""
    return gr.update(choices=dropdown_choices(runner, tool), value=runner.model_for(tool))


# ---- the System tab ---------------------------------------------------------------------------------------------
def download_id(repo: str) -> str:
    """The elem_id of ``repo``'s download button (letters, digits and dashes)."""
    return "system-download-" + re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")


def models_html(rows: list[dict]) -> str:
    """Every tool's model: what it is, its size, whether it is downloaded, gated or not, and where it lives."""
    cells = []
    for row in rows:
        model = html.escape(row["model"]) + (f" + {html.escape(row['transformer'])}" if row.get("transformer") else "")
        if row["kind"] == "auxiliary":
            model = "+ " + model
        size = "?" if row["bytes"] is None else size_text(row["bytes"])
        gated = {True: "yes (licence and login)", False: "no", None: "?"}[row["gated"]]
        cells.append([html.escape(row["tool"]), model, html.escape(row["kind"]), size, html.escape(row["downloaded"]),
                      gated, f"<code>{html.escape(row['where'])}</code>"])
    head = "".join(f"<th>{h}</th>" for h in ("Tool", "Model", "Kind", "Size", "Downloaded", "Gated", "Where"))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)
    token = hub.token_state().describe()
    return (f"<table class='ff-table ff-models'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<div class='ff-muted'>Downloads go to <code>{html.escape(str(hub.cache_dir()))}</code>; "
            f"{html.escape(token)}.</div>")


def models_panel(ctx) -> tuple[gr.HTML, list, callable]:
    """The System tab's Models section: (the table, its download buttons, a refresh returning their values)."""
    runner = ctx.runner
    table = gr.HTML("", elem_id="system-models")
    repos = runner.hub_models()
    buttons = []
    with gr.Row():
        for repo in repos:
            button = gr.Button(f"Download {repo}", size="sm", variant="secondary", scale=0, min_width=220,
                               visible=False, elem_id=download_id(repo))
            buttons.append(button)

    def refresh():
        rows = runner.model_rows()
        done = {row["model"] for row in rows if row["downloaded"] == "yes"}
        return (models_html(rows), *[gr.update(visible=repo not in done) for repo in repos])

    for repo, button in zip(repos, buttons):
        def fetch(progress=gr.Progress(), repo=repo):
            runner.download(repo, progress)
            gr.Info(f"{repo} is downloaded.")
            return refresh()

        button.click(fetch, None, [table, *buttons], api_visibility="private", concurrency_id=DOWNLOAD_QUEUE,
                     concurrency_limit=1, show_progress_on=[table])
    return table, buttons, refresh
