"""Architecture families: one builder module each.

Every module ``pipeline.families.<name>`` defines
``build(hp, input_shape, num_classes) -> keras.Model``: ``hp`` is a plain mapping from the
family's hyperparameter names, as written under ``families.<name>`` in the search-space
YAML, plus the common ``dropout`` and ``l2``, to concrete values. Inputs are
channels-last (H, W, C) from 8x8 to 224x224; the output is a softmax over the classes.
Builders use ``keras.layers`` / ``keras.ops`` only, so they run on TensorFlow and JAX.

To add a hyperparameter to a family: declare it (type, range, default) under the family in
``search_spaces/*.yaml`` and read it in the builder as ``hp["name"]``. The ranges, steps and
defaults live in the YAML only; shared pieces (L2 regulariser, downsampling budget,
conv-BN unit, ImageNet stem, classifier head) are in ``_common.py``.

``transfer`` (pretrained ``keras.applications`` backbones) also takes ``weights``, where its
ImageNet weights are found (``backbones.WeightsSource``); the HyperModel passes it.
"""

import importlib
from collections.abc import Callable

FAMILY_NAMES = (
    "mlp",
    "simple_cnn",
    "lenet",
    "alexnet",
    "vgg",
    "inception",
    "resnet",
    "xception",
    "densenet",
    "mobilenet",
    "transfer",
)


def get_builder(name: str) -> Callable:
    """Return the ``build`` function of family ``name``."""
    if name not in FAMILY_NAMES:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(f"pipeline.families.{name}").build
