"""PO-CLIP: make CLIP robust to typographic attacks with preference optimization."""

__version__ = "0.1.0"
