"""Connecting two trained networks along a geodesic: coming soon."""

import streamlit as st

st.title("Connect two networks")
st.info(
    "Coming soon. This page will walk from one trained network to another trained from a different "
    "seed, bending around high-loss regions, and compare with the straight line and a Bezier curve."
)
