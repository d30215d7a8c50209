"""The package version: its one source (pyproject.toml reads it), importable from any layer."""

__version__ = "0.1.0"
