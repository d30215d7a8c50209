"""The ``tensortap`` command: thin wrappers over the Python API."""
