"""The FluxForge web studio (Gradio): `create_demo()` builds it, `launch(args)` serves it."""
