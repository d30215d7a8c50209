"""Rendering results for people (rich tables, HTML) and machines (JSON)."""
