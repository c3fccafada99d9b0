"""Datasets: IDX and .npz files, the shipped sample, any picture as model input (light:
NumPy only)."""
