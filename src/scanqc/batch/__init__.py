"""Layer 4: one engine that scores folders, locally or on a Dask cluster."""
