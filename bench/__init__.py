"""Benchmark harness: memory, speed and fidelity of each quantization backend on FLUX.1-shaped models."""
