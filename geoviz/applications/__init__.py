"""The applications: one call each for Python and the CLI (api.py), their cost (cost.py), and
the claims measured over seeds (claims.py)."""
