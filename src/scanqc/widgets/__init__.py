"""Layer 5: napari dock widgets and glue. The only code that imports napari, qtpy or magicgui."""
