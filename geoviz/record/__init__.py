"""The record layer: sweeps of runs (run records and the runner stay in geoviz.runs and
geoviz.runner until they are moved here)."""
