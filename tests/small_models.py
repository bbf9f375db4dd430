"""Small models covering every structure the channel analysis handles."""

from typing import Any


def unet(keras: Any) -> Any:
    """Encoder-decoder with Conv2DTranspose and skip concatenations."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    e1 = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(inputs)))
    e2 = layers.Conv2D(12, 3, strides=2, padding="same", activation="relu")(e1)
    bottom = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(e2)
    u2 = layers.Conv2DTranspose(12, 2, strides=2)(bottom)
    d2 = layers.Conv2D(12, 3, padding="same", activation="relu")(layers.Concatenate()([u2, e2]))
    u1 = layers.UpSampling2D()(d2)
    d1 = layers.Concatenate()([e1, u1])
    d1 = layers.BatchNormalization()(d1)
    outputs = layers.Conv2D(2, 1)(d1)
    return keras.Model(inputs, outputs, name="unet")


def conv1d(keras: Any) -> Any:
    layers = keras.layers
    inputs = keras.Input((32, 4))
    x = layers.Conv1D(8, 5, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling1D()(x)
    y = layers.Conv1D(8, 3, padding="same")(x)
    x = layers.Add()([x, layers.BatchNormalization()(y)])
    x = layers.SeparableConv1D(6, 3, padding="same", activation="swish")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3)(x), name="conv1d")


def sequential(keras: Any) -> Any:
    """A Sequential VGG-style model with a Flatten -> Dense head."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(),
        layers.Conv2D(6, 3, use_bias=False),
        layers.Activation("sigmoid"),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(10, activation="relu"),
        layers.Dense(4),
    ], name="sequential_vgg")


def nested_backbone(keras: Any) -> Any:
    """A functional backbone used as a layer inside another model."""
    layers = keras.layers
    b_in = keras.Input((16, 16, 3))
    b = layers.Conv2D(8, 3, padding="same", name="stem")(b_in)
    b = layers.BatchNormalization()(b)
    r = layers.Conv2D(8, 3, padding="same", activation="relu")(b)
    b = layers.ReLU()(layers.Add()([b, r]))
    backbone = keras.Model(b_in, b, name="backbone")
    inputs = keras.Input((16, 16, 3))
    x = backbone(inputs)
    x = layers.Conv2D(10, 1, name="stem")(x)  # same name as the backbone's stem
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(2)(x), name="outer")


def multi_io(keras: Any) -> Any:
    """Two inputs, two outputs, a squeeze-and-excitation block and a shared layer."""
    layers = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((8, 8, 2), name="extra")
    x = layers.Conv2D(8, 3, padding="same")(image)
    y = layers.Conv2D(4, 1)(extra)
    x = layers.Concatenate()([x, y])
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.Conv2D(24, 1)(x)
    se = layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = layers.Conv2D(4, 1, activation="relu")(se)
    se = layers.Conv2D(24, 1, activation="sigmoid")(se)
    x = layers.Multiply()([x, se])
    shared = layers.Conv2D(5, 1)
    a = shared(x)
    b = shared(layers.MaxPooling2D(1)(x))
    head1 = layers.Dense(3, name="head1")(layers.GlobalAveragePooling2D()(a))
    head2 = layers.Conv2D(1, 1, name="head2")(layers.Add()([a, b]))
    return keras.Model([image, extra], [head1, head2], name="multi_io")


def bare_ops(keras: Any) -> Any:
    """Residual adds and activations written as bare tensor ops (``x + y``)."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same")(inputs)
    y = layers.Conv2D(6, 3, padding="same")(x)
    z = (x + y) * 0.5
    z = layers.ReLU()(z + 3.0) / 6.0
    return keras.Model(inputs, layers.Conv2D(2, 1)(z), name="bare_ops")


def grouped_depthwise(keras: Any) -> Any:
    """ConvNeXt-style depthwise convolutions written as ``Conv2D(groups=channels)``, one with
    two filters per channel, one without bias, inside a residual block."""
    layers = keras.layers
    inputs = keras.Input((10, 10, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    y = layers.Conv2D(8, 7, padding="same", groups=8, name="dw")(x)
    y = layers.BatchNormalization()(y)
    y = layers.Conv2D(8, 1, activation="relu", name="pw")(y)
    x = layers.Add()([x, y])
    x = layers.Conv2D(16, 3, groups=8, use_bias=False, name="dw_x2")(x)
    x = layers.Conv1D(12, 1, name="pw2")(layers.Reshape((64, 16))(x))
    x = layers.Conv1D(12, 3, groups=12, padding="same", name="dw1d")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3)(x), name="grouped_depthwise")


def deep_chain(keras: Any, depth: int = 600) -> Any:
    """``depth`` Dense layers in a row: gated, a graph deeper than Python's recursion limit."""
    inputs = keras.Input((4,))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Dense(4, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="deep_chain")


def resnext(keras: Any) -> Any:
    """Two ResNeXt bottleneck blocks: 1x1, grouped 3x3 (groups=4), 1x1, added to the stem's
    channels; groups stem (32, no blocks), b0_in, b0_grouped, b1_in, b1_grouped (32 channels
    in 4 blocks each)."""
    layers = keras.layers

    def conv_bn(x, filters, name, kernel=1, groups=1):
        x = layers.Conv2D(filters, kernel, padding="same", groups=groups, name=name)(x)
        return layers.BatchNormalization(name=f"{name}_bn")(x)

    inputs = keras.Input((8, 8, 3))
    x = layers.ReLU()(conv_bn(inputs, 32, "stem", kernel=3))
    for block in range(2):
        y = layers.ReLU()(conv_bn(x, 32, f"b{block}_in"))
        y = layers.ReLU()(conv_bn(y, 32, f"b{block}_grouped", kernel=3, groups=4))
        x = layers.ReLU()(layers.Add()([x, conv_bn(y, 32, f"b{block}_out")]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4)(x), name="resnext")


def subclassed_blocks(keras: Any) -> Any:
    """A functional model whose residual blocks are a user's ``Layer`` subclass (conv, BN,
    ReLU, conv, BN, added to the block's input), one of them nested in another subclass."""
    layers = keras.layers

    class Block(layers.Layer):
        def __init__(self, filters: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.conv1 = layers.Conv2D(filters, 3, padding="same", name="conv1")
            self.bn1 = layers.BatchNormalization(name="bn1")
            self.conv2 = layers.Conv2D(filters, 3, padding="same", name="conv2")
            self.bn2 = layers.BatchNormalization(name="bn2")

        def call(self, x: Any, training: Any = None) -> Any:
            y = layers.ReLU()(self.bn1(self.conv1(x), training=training))
            return x + self.bn2(self.conv2(y), training=training)

    class Stage(layers.Layer):
        def __init__(self, filters: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.block = Block(filters, name="inner_block")
            self.project = layers.Conv2D(filters, 1, name="project")

        def call(self, x: Any) -> Any:
            return self.project(self.block(x))

    inputs = keras.Input((8, 8, 3))
    x = layers.ReLU()(layers.Conv2D(8, 3, padding="same", name="stem")(inputs))
    x = Block(8, name="block1")(x)
    x = Stage(8, name="stage2")(x)
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
    return keras.Model(inputs, layers.Dense(3)(x), name="subclassed_blocks")
