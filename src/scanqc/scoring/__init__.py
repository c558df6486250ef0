"""Layer 3: scoring.

References, Siamese distance, field of view, image quality, region, valuation. Pure
functions taking optional ``progress`` callbacks; no Qt.
"""
