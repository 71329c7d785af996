"""One module per tool tab; each has TITLE and build(ctx). TOOL_TABS is the order the studio shows them in."""

from . import canny, depth, fill, generate, kontext, redux

TOOL_TABS = (generate, fill, kontext, depth, canny, redux)
