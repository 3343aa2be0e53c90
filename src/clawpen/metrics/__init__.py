"""Metrics: collection (cgroups, /proc, psutil), storage with downsampling, Prometheus."""
