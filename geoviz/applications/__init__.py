"""The applications measured together (sparsify, continual, connect): claims over seeds."""
