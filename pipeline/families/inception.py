"""Inception: GoogLeNet (v1) or factorised Inception-v3 modules in stages."""

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, imagenet_stem, l2, max_halvings


def _inception_v1(x, f, reg):
    """GoogLeNet module: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max-pool->1x1, concatenated."""
    # Branch widths keep GoogLeNet's inception-3a ratios (64, 96->128, 16->32, 32 at f=64).
    b1 = conv_bn(x, f, 1, reg)
    b3 = conv_bn(conv_bn(x, f * 3 // 2, 1, reg), 2 * f, 3, reg)
    b5 = conv_bn(conv_bn(x, f // 4, 1, reg), f // 2, 5, reg)
    bp = layers.MaxPooling2D(3, strides=1, padding="same")(x)
    bp = conv_bn(bp, f // 2, 1, reg)
    return layers.Concatenate()([b1, b3, b5, bp])


def _inception_v3(x, f, reg):
    """Inception-v3 module: the 5x5 as two 3x3s, the 3x3 factorised into 1xn then nx1."""
    # v3 uses n=7 on its 17x17 grid; on smaller maps n=3 already spans the map.
    n = 7 if min(x.shape[1], x.shape[2]) >= 17 else 3
    b1 = conv_bn(x, f, 1, reg)
    bn = conv_bn(x, f * 3 // 2, 1, reg)
    bn = conv_bn(bn, 2 * f, (1, n), reg)
    bn = conv_bn(bn, 2 * f, (n, 1), reg)
    b5 = conv_bn(x, f // 4, 1, reg)
    b5 = conv_bn(b5, f // 2, 3, reg)
    b5 = conv_bn(b5, f // 2, 3, reg)
    bp = layers.MaxPooling2D(3, strides=1, padding="same")(x)
    bp = conv_bn(bp, f // 2, 1, reg)
    return layers.Concatenate()([b1, bn, b5, bp])


MODULES = {"v1": _inception_v1, "v3": _inception_v3}


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build an Inception net: stem, then ``num_stages`` stages of ``modules_per_stage``."""
    reg = l2(hp)
    base = int(hp["base_filters"])
    module = MODULES[hp["module_type"]]
    inputs = keras.Input(shape=input_shape)
    x = imagenet_stem(inputs, 2 * base, reg, input_shape)
    budget = max_halvings(x.shape[1:3])
    for stage in range(int(hp["num_stages"])):
        if stage > 0 and budget > 0:
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
            budget -= 1
        for _ in range(int(hp["modules_per_stage"])):
            x = module(x, base * 2**stage, reg)
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="inception")
