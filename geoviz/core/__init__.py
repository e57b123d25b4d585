"""The engine: G v products (metric.py, linearize.py, linear_graph.py), the step solver and
the path iterator (engine.py), Adam for the penalty mode (optim.py). Knows nothing of
applications."""
