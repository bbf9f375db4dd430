"""The ``dsa-tf`` job: tfds data pipelines (``data``), run settings and the named schedules
(``config``), the whole flow into a run directory (``pipeline``), its report and figure
(``report``) and the command line (``cli``).

Imports: any wing (``structure``, ``allocation``, ``deploy``), ``dsa_tf.models`` and
``dsa_tf._keras``; nothing imports from here but the package's public API.
"""
