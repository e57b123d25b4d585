"""The applications as one call each (sparsify, continual, connect), for Python and the CLI."""
