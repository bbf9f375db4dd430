"""Putting a stripped model on a device: TFLite export (``export``) with verification in the
LiteRT interpreter (``verify``, ``litert``), LiteRT latency measurement (``timing``) and
quantisation-aware training with tensorflow-model-optimization (``qat``).

Imports: ``dsa_tf._keras``, ``dsa_tf.structure`` and this wing only.
"""
