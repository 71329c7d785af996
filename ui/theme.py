"""Look and feel: a compact theme and the few styles the studio adds."""

from __future__ import annotations

import gradio as gr


def theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="orange", secondary_hue="slate", neutral_hue="slate",
                             spacing_size="sm", radius_size="md", text_size="sm")


CSS = """
.gradio-container { max-width: 1440px !important; padding-top: 8px !important; }
#ff-header { display: flex; align-items: baseline; gap: 12px; margin: 0 0 2px 0; }
#ff-header h1 { font-size: 1.35rem; margin: 0; }
#ff-header .ff-sub { color: var(--body-text-color-subdued); font-size: 0.9rem; }
.ff-banner { border: 1px solid #d9a441; background: rgba(245, 185, 66, 0.14); color: var(--body-text-color);
  border-radius: 8px; padding: 7px 12px; font-size: 0.85rem; line-height: 1.35; }
.ff-warning { border: 1px solid #d9534f; border-left-width: 5px; background: rgba(217, 83, 79, 0.10);
  color: var(--body-text-color); border-radius: 8px; padding: 8px 12px; font-size: 0.85rem; }
.ff-warning ul { margin: 4px 0 2px 18px; padding: 0; }
.ff-why { font-size: 0.8rem; }
.ff-status { font-size: 0.85rem; line-height: 1.45; padding: 6px 2px; }
.ff-chips { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0; }
.ff-result img { width: 100%; height: 100%; object-fit: contain; }
.ff-chip b { font-size: 0.78rem; font-weight: 600; }
.ff-chip { border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 1px 8px;
  font-size: 0.78rem; white-space: nowrap; background: var(--background-fill-secondary); }
.ff-muted { color: var(--body-text-color-subdued); font-size: 0.82rem; }
.ff-notices { margin: 0 0 0 18px; padding: 0; color: var(--body-text-color-subdued); font-size: 0.8rem; }
.ff-note p { margin: 0; font-size: 0.82rem; color: var(--body-text-color-subdued); }
.ff-table { border-collapse: collapse; width: 100%; font-size: 0.82rem; margin: 4px 0 8px 0; }
.ff-table th, .ff-table td { border-bottom: 1px solid var(--border-color-primary); padding: 3px 8px;
  text-align: left; vertical-align: top; }
.ff-table th { background: var(--background-fill-secondary); font-weight: 600; }
.ff-ok { color: #2e8b57; font-weight: 600; }
.ff-no { color: #c0392b; font-weight: 600; }
.ff-kv { font-size: 0.85rem; margin: 4px 0; }
.ff-estimate tr.ff-chosen td { background: var(--background-fill-secondary); font-weight: 600; }
.ff-estimate th.ff-current { text-decoration: underline; }
.ff-kv ul { margin: 2px 0 0 18px; padding: 0; }
footer { margin-top: 4px !important; }
/* A refusal shown on its input wraps within it (a long file name included) and scrolls if it is taller. */
[data-testid="status-tracker"] .validation-error { overflow-wrap: anywhere; max-height: 100%; overflow-y: auto; }
/* The Stop button shows while the tab's job waits or runs: while the page's progress indicator (on the notices
   under the result) is showing. */
.ff-panel .ff-stop { display: none !important; }
.ff-panel:has(.ff-progress > [data-testid="status-tracker"]:not(.hide)) .ff-stop { display: inline-flex !important; }
"""
