"""Layer 2: networks, the bundled-weight registry and training. torch, no Qt.

Nothing here imports torch at package-import time; import the submodules you need.
"""
