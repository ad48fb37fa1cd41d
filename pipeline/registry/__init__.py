"""The MLflow Model Registry side of the pipeline: the promotion gate, McNemar's test,
the pyfunc serving wrapper and loading registered models safely (Keras safe mode)."""
