"""MAHIA: export-and-deploy compiler for the MAHIA-X hybrid model."""

__version__ = "0.1.0"
