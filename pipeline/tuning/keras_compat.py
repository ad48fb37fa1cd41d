"""Keras behaviour the pipeline works around, in one place (Keras Tuner's is kt_compat.py,
TensorFlow's tf_compat.py).

Keras (3.15) sets ``supports_jit = False`` on ``RandomTranslation`` and ``RandomZoom`` for
every backend, and one such layer turns ``jit_compile`` off for the whole model: under JAX
every training step then runs op by op (a 2-core CPU: 75 ms per step against 20.5 ms
jitted; on an H200 the search's augmented trials took ~0.45 s per step). Their JAX code
traces under ``jax.jit``; tests/test_jax_backend.py checks that such a model is jitted and
still augments. TensorFlow keeps Keras' choice. No upstream issue names these two layers;
keras-team/keras-core#665 removed the same flag from ``RandomFlip`` once it was shown to
trace. On a Keras version this was not checked with, JAX training refuses to start with
one line: rerun tests/test_jax_backend.py on it, then add it to ``JIT_CHECKED_KERAS``.
"""

from pipeline.errors import PipelineError

# The Keras versions whose RandomTranslation/RandomZoom were checked to trace under jax.jit.
JIT_CHECKED_KERAS = ("3.15.",)


def check_version(version: str | None = None) -> None:
    """Raise PipelineError (one line) unless Keras is a version the jit patch was checked on."""
    if version is None:
        import keras

        version = keras.version()
    if not version.startswith(JIT_CHECKED_KERAS):
        raise PipelineError(
            f"Keras {version} is installed; pipeline/tuning/keras_compat.py was checked with "
            f"{', '.join(v + 'x' for v in JIT_CHECKED_KERAS)} only: install the version in "
            "requirements.lock, or rerun tests/test_jax_backend.py and add it there"
        )


def jittable_on_jax(layer):
    """``layer``, marked as fit for ``jit_compile`` where the backend is JAX."""
    import keras

    if keras.backend.backend() != "jax" or layer.supports_jit:
        return layer
    check_version()
    layer.supports_jit = True
    return layer
