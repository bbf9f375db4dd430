"""The ``dsa-tf`` command (also ``python -m dsa_tf``).

Commands:
    dsa-tf prune [--config=paper|quick] [--model=...] [--dataset=...] [--budget=...] --out=DIR
        Trains a model with DSA to the budget, strips, evaluates, exports and times it, and
        writes the run directory (see :mod:`dsa_tf.run.pipeline`). Started again with the same
        arguments, it resumes an interrupted run.
    dsa-tf report DIR
        Prints the before/after table of a finished run.
    dsa-tf benchmark FILE.tflite [FILE.tflite ...] [--threads=1] [--latency_runs=20]
        Times .tflite files side by side in LiteRT.
    dsa-tf profile MODEL --out=TABLE.json [--image_size=N] [--num_classes=10]
                   [--precision=float32|int8] [--threads=1] [--extend=OLD.json]
                   [--coarse_below=SHARE]
        Measures MODEL's latency table on this device (run it on the target device: it needs
        only dsa_tf and LiteRT), for ``dsa-tf prune --resource=latency --latency_table=...``.
        MODEL is a .keras file, resnetN or a keras.applications name (built at --image_size,
        default 32 for resnetN and 224 otherwise, with --num_classes outputs); profile the
        model the pruning run will prune, at its input size. ``--coarse_below=0`` measures
        every signature on its full grid (default: the signatures that together take under
        5% of the operators' time on a coarse one; see
        :func:`dsa_tf.deploy.latency_table.measure_table`).

``--config`` chooses the schedule (``paper``: DSA's; ``quick``: minutes on a CPU); every other
flag overrides one of its values. Examples::

    dsa-tf prune --model=resnet56 --dataset=cifar10 --budget=0.5 --out=runs/r56
    dsa-tf prune --config=quick --dataset=cifar10 --out=runs/quick
    dsa-tf prune --model=MobileNetV2 --weights=imagenet --dataset=imagenette/160px \\
        --image_size=128 --budget=0.6 --out=runs/mnv2
    dsa-tf report runs/r56
    dsa-tf profile resnet56 --out=r56_table.json
    dsa-tf prune --model=resnet56 --resource=latency --latency_table=r56_table.json ...
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Sequence

from absl import app, flags, logging

from dsa_tf.run.config import RunConfig, preset

CONFIG = flags.DEFINE_enum("config", "paper", ["paper", "quick"],
                           "The schedule: the DSA paper's, or a CPU-sized quick one.")
VERBOSE = flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress, 2 one line per epoch.")
THREADS = flags.DEFINE_integer("threads", 1,
                                "LiteRT threads for `dsa-tf benchmark` and `dsa-tf profile`.")
PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "int8"],
                              "Precision of the model `dsa-tf profile` times.")
NUM_CLASSES = flags.DEFINE_integer("num_classes", 10,
                                   "Outputs of a model `dsa-tf profile` builds by name.")
EXTEND = flags.DEFINE_string("extend", None, "A table `dsa-tf profile` extends (only the "
                             "operators it lacks are measured).")
COARSE_BELOW = flags.DEFINE_float(
    "coarse_below", None, "`dsa-tf profile`: signatures whose operators together take less "
    "than this share of the operators' time are measured on a coarse grid (0: none; default "
    "the library's, 0.05).")
flags.register_validator("coarse_below", lambda value: value is None or 0 <= value < 1,
                         message="--coarse_below must be a share in [0, 1).")


def _define_run_flags() -> None:
    for field in dataclasses.fields(RunConfig):
        value, help_text = field.default, field.metadata["help"]
        if field.name == "lr_boundaries":
            flags.DEFINE_list(field.name, [str(v) for v in value], help_text)
        elif isinstance(value, bool):
            flags.DEFINE_boolean(field.name, value, help_text)
        elif isinstance(value, int) or str(field.type).startswith("int"):
            flags.DEFINE_integer(field.name, value, help_text)
        elif isinstance(value, float):
            flags.DEFINE_float(field.name, value, help_text)
        else:
            flags.DEFINE_string(field.name, value, help_text)


_define_run_flags()
FLAGS = flags.FLAGS


def config_from_flags() -> RunConfig:
    """The --config schedule with every flag given on the command line applied to it."""
    given = {f.name: FLAGS[f.name].value for f in dataclasses.fields(RunConfig)
             if FLAGS[f.name].present}
    if "lr_boundaries" in given:
        given["lr_boundaries"] = tuple(int(v) for v in given["lr_boundaries"])
    return preset(CONFIG.value, **given)


def main(argv: Sequence[str]) -> int:
    """Runs one command; ``argv`` is what absl left after parsing the flags."""
    _quiet_tensorflow()
    if len(argv) < 2 or argv[1] not in ("prune", "report", "benchmark", "profile"):
        raise app.UsageError("usage: dsa-tf prune|report|benchmark|profile ...; see "
                             "dsa-tf --help.")
    command, arguments = argv[1], list(argv[2:])
    if command == "prune":
        if arguments:
            raise app.UsageError(f"prune takes flags only, got {arguments}.")
        from dsa_tf.run.pipeline import run_pruning

        run_pruning(config_from_flags(), verbose=VERBOSE.value)
    elif command == "report":
        if len(arguments) != 1:
            raise app.UsageError("usage: dsa-tf report RUN_DIR")
        from dsa_tf.run.report import load_report, summary_table

        print(summary_table(load_report(arguments[0])))
    elif command == "profile":
        if len(arguments) != 1 or not FLAGS["out"].present:
            raise app.UsageError("usage: dsa-tf profile MODEL --out=TABLE.json")
        profile(arguments[0], FLAGS.out)
    else:
        if not arguments:
            raise app.UsageError("usage: dsa-tf benchmark FILE.tflite [FILE.tflite ...]")
        from dsa_tf.deploy.timing import compare_tflite_latency

        for report in compare_tflite_latency(arguments, threads=THREADS.value,
                                             rounds=FLAGS.latency_runs):
            print(report.summary())
    return 0


def profile(name: str, out: str) -> None:
    """``dsa-tf profile``: measures the latency table of the model ``name`` into ``out``."""
    import tensorflow as tf

    from dsa_tf.deploy.latency_table import LatencyTable
    from dsa_tf.deploy.profile import profile_latency
    from dsa_tf.run.pipeline import build_model

    if name.endswith(".keras"):
        model = tf.keras.models.load_model(name, compile=False)
    else:
        size = FLAGS.image_size or (32 if name.lower().startswith("resnet") else 224)
        model = build_model(preset("quick", model=name), (size, size, 3), NUM_CLASSES.value,
                            tf.keras)
    table = LatencyTable.load(EXTEND.value) if EXTEND.value else None
    coarse = {} if COARSE_BELOW.value is None else {"coarse_below": COARSE_BELOW.value}
    table = profile_latency(model, table, precision=PRECISION.value, threads=THREADS.value,
                            **coarse)
    table.save(out)
    print(f"latency table of {model.name!r} ({len(table.entries)} operator signatures, "
          f"{table.precision}, {table.threads} thread(s), {table.device}) written to {out}")


def _quiet_tensorflow() -> None:
    """Keeps the command's output to progress and results: TensorFlow's and the TFLite
    converter's informational logs and deprecation notices are dropped."""
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    for message in (r"\s*Warning: tf.lite.Interpreter is deprecated",
                    "Statistics for quantized inputs were expected"):
        warnings.filterwarnings("ignore", message=message)


def run(argv: Sequence[str] | None = None) -> None:
    """The console entry point."""
    argv = list(sys.argv if argv is None else argv)
    # --help describes the main module: make it this one's commands and flags.
    sys.modules["__main__"].__doc__ = __doc__
    for flag in FLAGS.flags_by_module_dict().get(__name__, []):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, argv=argv)
