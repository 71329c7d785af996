"""One module per tool tab; each has build(ctx)."""
