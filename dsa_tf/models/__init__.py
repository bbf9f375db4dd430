"""Reference architectures used by dsa_tf's examples, tests and benchmarks."""

from dsa_tf.models.cifar_resnet import cifar_resnet

__all__ = ["cifar_resnet"]
