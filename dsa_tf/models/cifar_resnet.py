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
        An uncompiled ``keras.Model`` named ``resnet{depth}``, with layer names such as
        ``stem_conv``, ``stage2_block1_1_conv`` (first conv of a block), ``stage2_block1_2_bn``
        and ``logits``, so that channel-group names are stable.

    Example:
        >>> model = cifar_resnet(20)
        >>> model.count_params()
        274042
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110...), got {depth}")
    keras = keras or default_keras()
    layers = keras.layers
    blocks = (depth - 2) // 6
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", kernel_regularizer=regularizer,
                          name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.ReLU(name="stem_relu")(conv_bn(inputs, 16, 3, 1, "stem"))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            name = f"stage{stage + 1}_block{block + 1}"
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if x.shape[-1] != filters or stride != 1:
                shortcut = conv_bn(x, filters, 1, stride, f"{name}_shortcut")
            y = layers.ReLU(name=f"{name}_relu1")(conv_bn(x, filters, 3, stride, f"{name}_1"))
            y = conv_bn(y, filters, 3, 1, f"{name}_2")
            x = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal",
                           kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")
