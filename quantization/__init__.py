"""Device-aware quantization: config objects, a backend registry, the device policy and fallback."""
