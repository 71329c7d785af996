"""Device-aware quantization: config objects, backends, the device policy, and one load path with fallbacks.

A library: the caller passes the folders it may keep things in (load.Caches) and shows its errors.
"""
