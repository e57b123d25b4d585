"""Figures drawn from run and sweep records (plotly; no Streamlit). The older figure
modules (geoviz/plots.py, plots_connect.py, landscape.py) move here when next changed."""
