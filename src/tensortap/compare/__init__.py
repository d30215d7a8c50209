"""compare: pair the records of two runs, measure their differences, find the first divergence.

Entry point: ``tensortap.compare.api.diff`` (``tt.diff``). Imports integrations' adapter
registry and the store layer, never an engine, localize, cli or report (apart from
``DiffReport.to_html``); tests/test_layers.py checks it.
"""
