"""The tune stage's parts: data input, oracles, tuners, MLflow per trial, saved state,
outputs, and the chief/worker mode. Importing this package does not load Keras.
"""
