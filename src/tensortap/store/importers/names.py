"""The names ``--format`` / ``format=`` accept, importable without loading any reader."""

FORMAT_NAMES = ("native", "vllm-il", "pass-dump", "sglang-dumper", "hf-debugger")
"""``native`` (a tensortap run) and one name per importer (detect.IMPORTERS, checked there)."""
