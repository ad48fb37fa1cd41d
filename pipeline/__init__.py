"""AutoML for image classification: a DVC pipeline of Keras Tuner searches tracked in MLflow."""

__version__ = "0.1.0"
