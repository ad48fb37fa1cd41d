"""Datasets: catalogue, fetching, decoding and preparation."""
