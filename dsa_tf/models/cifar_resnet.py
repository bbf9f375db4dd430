"""CIFAR ResNets (He et al. 2016, section 4.2) with 1x1-conv projection shortcuts.

The variant pruned in DSA's CIFAR experiments: three stages of 16, 32 and 64 channels, n basic
blocks per stage (depth = 6n + 2), and a 1x1 convolution + BatchNorm on the shortcut wherever
the shape changes (the first block of stages 2 and 3).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from dsa_tf._keras import default_keras

DEPTHS = (20, 32, 44, 56, 110)


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    weight_decay: float = 0.0,
    keras: ModuleType | None = None,
) -> Any:
    """Builds a CIFAR ResNet-``depth`` as a functional Keras model.

    Args:
        depth: 20, 32, 44, 56 or 110 (any 6n + 2 works).
        num_classes: size of the softmax-free logits layer.
        input_shape: image shape, channels last.
        weight_decay: L2 factor on convolution and Dense kernels (0 disables it).
        keras: the Keras module to build with (``keras`` or ``tf_keras``); defaults to
            ``tf.keras``.

    Returns:
        An unbuilt-weights, compiled-free ``keras.Model`` named ``resnet{depth}``.

    Example:
        >>> model = cifar_resnet(20)
        >>> model.count_params()
        272474
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110...), got {depth}")
    keras = keras or default_keras()
    layers = keras.layers
    blocks = (depth - 2) // 6
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv(x: Any, filters: int, kernel: int, stride: int = 1) -> Any:
        return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                             kernel_initializer="he_normal", kernel_regularizer=regularizer)(x)

    def bn(x: Any) -> Any:
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    inputs = keras.Input(shape=input_shape)
    x = layers.ReLU()(bn(conv(inputs, 16, 3)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if x.shape[-1] != filters or stride != 1:
                shortcut = bn(conv(x, filters, 1, stride))
            y = layers.ReLU()(bn(conv(x, filters, 3, stride)))
            y = bn(conv(y, filters, 3))
            x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal",
                           kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")
