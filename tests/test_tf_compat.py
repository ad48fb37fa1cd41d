"""The TensorFlow workaround: a trial's traced graphs are freed once the trial is over."""

import gc
import weakref

import pytest

from pipeline.errors import PipelineError
from pipeline.tuning import tf_compat

tf = pytest.importorskip("tensorflow")


def _trace_a_custom_gradient() -> weakref.ref:
    """Trace a tf.function that differentiates a custom gradient; a weakref to its graph."""

    @tf.custom_gradient
    def double(x):
        return 2 * x, lambda dy: 2 * dy

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = double(x)
        return tape.gradient(y, x)

    concrete = step.get_concrete_function(tf.TensorSpec([None], tf.float32))
    assert concrete(tf.constant([1.0])).numpy().tolist() == [2.0]
    return weakref.ref(concrete.graph)


@pytest.mark.integration
def test_tensorflow_keeps_a_traced_graph_until_its_custom_gradients_are_forgotten():
    tf_compat.forget_custom_gradients()
    graph = _trace_a_custom_gradient()
    gc.collect()
    assert graph() is not None  # the leak: the registry's closure holds the whole graph
    assert tf_compat.forget_custom_gradients() >= 1
    gc.collect()
    assert graph() is None


def test_a_tensorflow_version_the_workaround_was_not_checked_on_fails_loudly():
    tf_compat.check_version("2.21.0")
    with pytest.raises(PipelineError, match="TensorFlow 2.99.0 is installed"):
        tf_compat.check_version("2.99.0")
