"""What channels a model has, how they are coupled, what they cost, and cutting them out.

The graph walk (``graph``) turns a functional Keras model into channel groups with the
per-layer rules (``rules``, over ``channels`` maps), and builds the quadratic FLOPs and
params models (``quadratic``); ``counting`` counts a plain model; ``strip`` rebuilds a smaller
model with sliced weights, and ``masking`` computes the masked reference it must equal.

Imports: ``dsa_tf._keras`` and this wing only. Nothing here knows about DSA's gates: a layer
that masks channels declares itself with ``channel_mask = True``
(:func:`dsa_tf.structure.rules.is_mask_layer`).
"""
