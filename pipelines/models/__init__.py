"""Models: where they come from (sources), the tiny family, and how a model directory becomes a pipeline."""
