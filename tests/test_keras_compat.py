"""The Keras jit patch stays behind pipeline/tuning/keras_compat.py, for the Keras versions
it was checked with (its effect under JAX: tests/test_jax_backend.py)."""

import keras
import pytest

from pipeline.errors import PipelineError
from pipeline.tuning import keras_compat


def test_a_keras_version_the_jit_patch_was_not_checked_on_fails_loudly():
    keras_compat.check_version("3.15.1")
    with pytest.raises(PipelineError, match="Keras 3.99.0 is installed"):
        keras_compat.check_version("3.99.0")


def test_the_installed_keras_is_one_the_patch_was_checked_on():
    keras_compat.check_version()  # raises PipelineError otherwise


def test_off_jax_the_layers_keep_keras_own_choice(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    layer = keras.layers.RandomTranslation(0.1, 0.1)
    assert keras_compat.jittable_on_jax(layer).supports_jit is False


def test_on_jax_an_unchecked_keras_refuses_rather_than_patching(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    with pytest.raises(PipelineError, match="Keras 3.99.0"):
        keras_compat.jittable_on_jax(keras.layers.RandomZoom(0.1))
    monkeypatch.setattr(keras, "version", lambda: "3.15.1")
    assert keras_compat.jittable_on_jax(keras.layers.RandomZoom(0.1)).supports_jit is True
