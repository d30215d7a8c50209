"""compare: pair the records of two runs, measure their differences, find the first divergence.

Entry point: ``tensortap.compare.api.diff`` (``tt.diff``). Imports the store layer only,
never an engine, capture, integrations, cli or report (apart from ``DiffReport.to_html``).
"""
