"""The FLUX.1 tools, each wrapping diffusers' own pipeline; `engine.Studio` is the Python API."""
