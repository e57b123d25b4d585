"""Continual learning along a geodesic: coming soon."""

import streamlit as st

st.title("Continual learning without forgetting")
st.info(
    "Coming soon. This page will start from a network trained on task 1 and walk towards task 2 "
    "while keeping task 1, using a small memory of task-1 inputs (no labels), and compare with "
    "fine-tuning, EWC and replay."
)
