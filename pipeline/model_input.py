"""What every model of the pipeline takes: raw 0-255 pixels, rescaled by its own first layer.

The splits on disk, predict's inputs and the served model's inputs are all 0-255 pixels; the
first layer after the model's input, a ``Rescaling(1/255)`` named ``pixels_0_255``, turns them
into the [0, 1] floats the families were designed for. No consumer scales anything, so none
can scale twice or not at all. A model saved before this convention has no such layer and
expects [0, 1]: it is refused with one line rather than fed pixels it would misread.
"""

from pathlib import Path

PIXELS_LAYER = "pixels_0_255"  # the served pyfunc (pyfunc_model.py) repeats this name
INPUT_PIXELS = "0-255"  # model_info.json's "input_pixels"


def pixel_inputs(input_shape):
    """``(inputs, x)``: a float32 ``keras.Input`` of ``input_shape`` and its rescaled tensor."""
    import keras

    inputs = keras.Input(shape=tuple(int(d) for d in input_shape), dtype="float32")
    return inputs, keras.layers.Rescaling(1.0 / 255.0, name=PIXELS_LAYER)(inputs)


def takes_pixels(model) -> bool:
    """Whether ``model``'s first layer after its input is the pipeline's 0-255 rescaling."""
    import keras

    first = next((la for la in model.layers if not isinstance(la, keras.layers.InputLayer)), None)
    return (
        isinstance(first, keras.layers.Rescaling)
        and first.name == PIXELS_LAYER
        and abs(float(first.scale) - 1.0 / 255.0) < 1e-9
        and float(first.offset) == 0.0
    )


def old_model_message(path: Path | str) -> str:
    """The one line that refuses a model trained before models took 0-255 pixels."""
    return f"{path}: trained before models took 0-255 pixels; retrain with `dvc repro`"


def with_pixel_input(model):
    """An old-convention ``model`` (expects [0, 1]) behind the 0-255 rescaling layer.

    Only for scoring a registered champion from before the change on today's pixels; a
    model that is served or predicted with is refused instead (``old_model_message``).
    """
    import keras

    inputs, x = pixel_inputs(model.input_shape[1:])
    return keras.Model(inputs, model(x), name=model.name)
