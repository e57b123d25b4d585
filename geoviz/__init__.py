"""geoviz: see and steer geodesic paths through the weight space of a neural network.

The public Python API (Raghavan & Thomson, arXiv 2106.02793):

- :func:`sparsify`, :func:`continual`, :func:`connect`: one call per application on
  your own ``nn.Module`` and data (tensors, ``(inputs, labels)``, a Dataset or a
  DataLoader); each writes the run folder the CLI writes and returns a :class:`Run`
  (``run.table`` a DataFrame, ``run.summary``, ``run.figures()``).
- :func:`prepare_sparsify`, :func:`prepare_continual`, :func:`prepare_connect`, :func:`walk`:
  each call in its two steps (every check and the run record, then the walk); the
  CLI and the live pages use them, the pages driving the runner in a thread of its own.
- :class:`SolverConfig`: every setting of a step.
- :func:`metric_vector_product`: G(w) v for any module and batch.
- :class:`Path`: the path iterator, one :class:`StepRecord` per ``next()``, for
  your own loop; objectives in ``geoviz.applications.objectives``.
- :func:`load_weights`: your own weights (safetensors or a state_dict read with
  ``weights_only=True``), checked against the module.
"""

from __future__ import annotations

__version__ = "0.1.0"

# the application modules live in geoviz.applications (sparsify.py, continual.py,
# connect.py): geoviz.sparsify, .continual and .connect are the functions
from geoviz.applications.api import (
    Run,
    connect,
    continual,
    prepare_connect,
    prepare_continual,
    prepare_sparsify,
    sparsify,
    walk,
)
from geoviz.core.engine import Path, SolverConfig, StepRecord
from geoviz.core.metric import metric_vector_product
from geoviz.record.runs import read_run
from geoviz.setups.weights import load_weights

__all__ = [
    "sparsify",
    "continual",
    "connect",
    "prepare_sparsify",
    "prepare_continual",
    "prepare_connect",
    "walk",
    "Run",
    "SolverConfig",
    "Path",
    "StepRecord",
    "metric_vector_product",
    "load_weights",
    "read_run",
]
