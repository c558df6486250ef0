"""Layer 4: the ``scanqc`` command line."""
