"""Test and demo helpers: tiny models built on the fly (no downloads)."""

from tensortap.testing.tiny import tiny_llama

__all__ = ["tiny_llama"]
