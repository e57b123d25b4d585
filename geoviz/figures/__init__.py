"""Figures drawn from run and sweep records (plotly; no Streamlit): the applications' charts
(plots.py, plots_connect.py), the loss landscape between optima (landscape.py), and the
Compare page's figures (compare.py)."""
