"""TensorFlow internals the tune stage works around, in one place.

tensorflow/tensorflow#97697 (also #80895, keras-team/keras#20245): every trace of a
``tf.custom_gradient`` function in graph mode registers its gradient closure in TF's
global gradient registry under a fresh ``CustomGradient-<n>`` name, and nothing ever
removes it. Keras' training step uses one (``ReplicaContext.all_reduce``), so each
trial's traced training graphs, every op in them, stay reachable from the registry after
the model is gone: about 20 MB of host memory per trial on digits, however often the
session is cleared (keras-team/tf-keras#898 proposes the same purge in clear_session).
"""

from pipeline.errors import PipelineError

# Checked against 2.21 (the lock): ``ops._gradient_registry._registry`` and the
# ``CustomGradient-`` prefix of ``custom_gradient.generate_name``.
SUPPORTED_VERSIONS = ("2.21",)
PREFIX = "CustomGradient-"


def check_version(version: str | None = None) -> None:
    """Raise PipelineError (one line) unless TensorFlow is a version the purge fits."""
    if version is None:
        import tensorflow as tf

        version = tf.__version__
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VERSIONS:
        raise PipelineError(
            f"TensorFlow {version} is installed; pipeline/tuning/tf_compat.py supports "
            f"{', '.join(SUPPORTED_VERSIONS)} only: install the version in requirements.lock"
        )


def forget_custom_gradients() -> int:
    """Drop the graph-mode custom gradients registered so far; return how many.

    Call between trials, once the trial's model and its traced functions are no longer
    used: a gradient is looked up while a function is traced, never afterwards, and a
    new trace registers a new name.
    """
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    names = [name for name in registry if name.startswith(PREFIX)]
    for name in names:
        del registry[name]
    return len(names)
