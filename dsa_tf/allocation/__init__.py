"""Deciding how many channels each group keeps, and applying it to a model.

DSA's differentiable keep process (``keep_process``), the ChannelGate layer (``gates``),
gating a model under a budget (``prune``), the gates' state (``gated_model``), the keep-ratio
gradient (``keep_gradients``), the budget ADMM as pure functions (``admm``), the DSACallback
that runs them inside ``fit`` (``callback``), the per-group report (``report``) and stripping
a gated model (``gated_strip``). The baseline allocators return kept channels per group
without training: ``uniform``, ``magnitude`` and ``taylor`` (the last two share the global
threshold of ``global_threshold``), on the budgets of ``budget`` and the weight-based channel
importance of ``importance``, under latency budgets timed on the device by
``measured_latency``; ``apply`` freezes a gated model to any such allocation.

Imports: ``dsa_tf._keras``, ``dsa_tf.structure``, ``dsa_tf.deploy`` and this wing; never
``dsa_tf.run``.
"""
