"""The record layer: the run record and its folders (runs.py, disk.py, sketch.py), the
runner that walks a path with Pause/Step/Stop (runner.py), and sweeps of runs (sweep*.py)."""
