"""Memory: the device, component sizes, placement per phase, and estimates before loading."""
