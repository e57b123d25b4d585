"""geoviz: see and steer geodesic paths through the weight space of a neural network."""

__version__ = "0.1.0"
