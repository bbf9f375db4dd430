"""run_pruning: the whole ``dsa-tf prune`` flow, from a dataset and a model to a run directory.

Phases (each timed and announced on one line): data, model (and the evaluation of a
pre-trained reference), training (warm-up, allocation, fine-tuning in one ``model.fit`` with
:class:`dsa_tf.DSACallback`, or with ``allocation`` a baseline allocator applied once at the
end of the same warm-up by :class:`dsa_tf.OneShotCallback`), with ``reference`` the unpruned
network trained on the same schedule, strip, evaluation, TFLite export (float32 and int8,
verified against Keras) and LiteRT latency of the unpruned and the stripped model side by side.

The run directory holds ``config.json``, ``history.csv``, ``backup/`` (Keras BackupAndRestore:
the same call, or the same ``dsa-tf prune`` command, resumes an interrupted training at the
last finished epoch), ``gated.keras`` (the trained gated model; a run that finished training
skips it when started again), ``stripped.keras``, ``unpruned*.tflite``, ``stripped*.tflite``,
``report.json``, ``allocation.png``, ``keep_ratio_trace.csv`` and ``allocation_trace.png``
(each group's keep ratio after every ADMM iteration), ``reference.keras`` (the unpruned
network trained on the same schedule, with ``--reference``) and, when TensorBoard is
installed, ``tensorboard/``.

Example (the quick schedule on CIFAR-10, about 10 minutes on 2 CPU cores)::

    from dsa_tf.run.pipeline import run_pruning
    from dsa_tf.run.config import preset
    report = run_pruning(preset("quick", dataset="cifar10", budget=0.5, out="runs/quick"))
    print(report["stripped"]["flops_ratio"], report["stripped"]["test_accuracy"])
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.allocation.callback import DSACallback
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gated_strip import strip
from dsa_tf.allocation.one_shot import OneShotCallback, baseline_allocator
from dsa_tf.allocation.prune import prune_to_budget
from dsa_tf.allocation.report import allocation_report, budget_status, predicted_latency
from dsa_tf.deploy.export import export_tflite
from dsa_tf.deploy.timing import compare_tflite_latency
from dsa_tf.deploy.verify import ExportVerificationError
from dsa_tf.models import cifar_resnet
from dsa_tf.run import data
from dsa_tf.run.config import RunConfig
from dsa_tf.run.report import plot_allocation, plot_trace, summary_table
from dsa_tf.structure.counting import count_flops, count_params
from dsa_tf.structure.graph import analyze

FROM_SCRATCH_BN_MOMENTUM = 0.9
TRACE_FILE = "keep_ratio_trace.csv"


def run_pruning(config: RunConfig, *, callbacks: Sequence[Any] = (), verbose: int = 1) -> dict:
    """Runs (or resumes) one pruning run and returns its report (also written as report.json).

    Args:
        config: the run's settings (see :func:`dsa_tf.run.config.preset`).
        callbacks: extra Keras callbacks for the training ``fit``.
        verbose: 0 silent, 1 progress bars and phase lines, 2 one line per epoch.

    Raises:
        ValueError: ``config.out`` holds a run with different settings.
    """
    out = os.path.abspath(config.out)
    os.makedirs(out, exist_ok=True)
    _claim_run_dir(out, config)
    log = _Log(verbose)
    keras = _keras.default_keras()
    keras.utils.set_random_seed(config.seed)

    with log.phase("data"):
        splits = data.load(config.dataset, data_dir=config.data_dir,
                           batch_size=config.batch_size, alpha_fraction=config.alpha_fraction,
                           seed=config.seed, image_size=config.image_size,
                           train_examples=config.train_examples or None,
                           download=config.download, manual_dir=config.manual_dir)
        log.say(f"{config.dataset}: {splits.train_examples:,} training, "
                f"{splits.alpha_examples:,} allocation, {splits.test_examples:,} test images "
                f"of shape {tuple(splits.input_shape)}, {splits.num_classes} classes")

    report: dict[str, Any] = {"config": config.to_dict(), "run_dir": out}
    with log.phase("model"):
        model = build_model(config, tuple(splits.input_shape), splits.num_classes, keras)
        from_logits = not _ends_in_softmax(model)
        report["unpruned"] = {"flops": count_flops(model), "params": count_params(model)}
        if config.init:
            _compile(model, config, keras, from_logits, steps_per_epoch=1)
            report["unpruned"]["test_accuracy"] = _accuracy(model, splits.test)
            log.say(f"reference test accuracy {report['unpruned']['test_accuracy']:.4f}")

    gated_path = os.path.join(out, "gated.keras")
    with log.phase("training"):
        if os.path.exists(gated_path):
            log.say(f"training already finished: loading {gated_path}")
            gated = keras.models.load_model(gated_path, compile=False)
        else:
            gated = prune_to_budget(model, config.budget, resource=config.resource,
                                    round_to=config.round_to, seed=config.seed,
                                    latency_table=config.latency_table)
            _compile(gated, config, keras, from_logits, steps_per_epoch=splits.steps_per_epoch)
            gated.fit(splits.train, epochs=config.epochs, verbose=_fit_verbosity(verbose),
                      shuffle=False,  # the dataset shuffles itself
                      callbacks=[*_training_callbacks(config, splits, out, keras, from_logits,
                                                      verbose), *callbacks])
            gated.save(gated_path)
        report["history"] = _read_history(os.path.join(out, "history.csv"))
        report["keep_ratio_trace"] = _read_history(os.path.join(out, TRACE_FILE))

    if config.reference and not config.init:
        with log.phase("reference"):
            model = train_reference(model, config, splits, out, from_logits, verbose)
            report["unpruned"]["test_accuracy"] = _accuracy(model, splits.test)
            log.say(f"unpruned reference test accuracy "
                    f"{report['unpruned']['test_accuracy']:.4f}")

    with log.phase("strip"):
        small = strip(gated)
        x = next(iter(splits.test))[0]
        parity = float(np.max(np.abs(np.asarray(small(x, training=False))
                                     - np.asarray(gated(x, training=False)))))
        small.save(os.path.join(out, "stripped.keras"))
        report["allocation"] = allocation_report(gated)
        report["admm_iterations"] = int(gates_of(gated)[0].admm_step.numpy())
        report["budget_status"] = budget_status(gated)
        frozen = [int(row["epoch"]) + 1 for row in report["history"]
                  if row.get("dsa_phase") == 2]
        report["budget_status"]["epoch"] = min(frozen) if frozen else None
        report["stripped"] = {
            "flops": count_flops(small), "params": count_params(small),
            "strip_max_abs_difference": parity}
        for name in ("flops", "params"):
            report["stripped"][f"{name}_ratio"] = (report["stripped"][name]
                                                  / report["unpruned"][name])

    with log.phase("evaluation"):
        _compile(small, config, keras, from_logits, steps_per_epoch=1)
        report["stripped"]["test_accuracy"] = _accuracy(small, splits.test)
        log.say(f"stripped test accuracy {report['stripped']['test_accuracy']:.4f}")

    with log.phase("export"):
        calibration = list(splits.representative_batches(max(1, 512 // config.batch_size)))
        # The unpruned reference for size and latency: the pre-trained model or the trained
        # reference, else the trained weights at full width.
        reference = model if config.init or config.reference else strip(gated, keep={
            g.name: range(g.channels) for g in analyze(gated).prunable})
        tflite = {}
        for label, keras_model in (("unpruned", reference), ("stripped", small)):
            report[label]["tflite"] = {}
            for mode in [None, "int8"] if config.int8 else [None]:
                kind = mode or "float32"
                try:
                    result = export_tflite(
                        keras_model, os.path.join(out, f"{label}{'_int8' if mode else ''}.tflite"),
                        quantize=mode, representative_data=calibration, seed=config.seed)
                except ExportVerificationError as error:  # recorded; the run goes on
                    report[label]["tflite"][kind] = {"error": str(error)}
                    log.say(f"{label} {kind} export failed its verification: {error}")
                    continue
                tflite[(label, kind)] = result
                report[label]["tflite"][kind] = result.to_dict()
                log.say(result.summary())

    with log.phase("latency"):
        # Under a latency budget: the table's prediction beside the times, measured with the
        # table's threads (on this machine; a table of another device predicts that device).
        predicted = predicted_latency(gated) if gates_of(gated)[0].latency_table else None
        latencies = compare_tflite_latency([r.path for r in tflite.values()],
                                           threads=predicted["threads"] if predicted else 1,
                                           rounds=config.latency_runs)
        for (label, kind), latency in zip(tflite, latencies):
            report[label]["tflite"][kind]["latency"] = latency.to_dict()
        if predicted:
            kind = predicted["precision"]
            for label in ("unpruned", "stripped"):
                if (label, kind) in tflite:
                    report[label]["tflite"][kind]["latency"]["predicted_ms"] = predicted[label]
            log.say(f"predicted {kind} latency ({predicted['threads']} thread(s)): unpruned "
                    f"{predicted['unpruned']:.3f} ms, stripped {predicted['stripped']:.3f} ms")

    report["timings_s"] = log.timings
    with open(os.path.join(out, "report.json"), "w") as file:
        json.dump(report, file, indent=2, default=_json_default)
    plot_allocation(report, os.path.join(out, "allocation.png"))
    if report["keep_ratio_trace"]:
        plot_trace(report["keep_ratio_trace"], os.path.join(out, "allocation_trace.png"))
    if verbose:
        print(summary_table(report), flush=True)
        print(f"run directory: {out}", flush=True)
    return report


def train_reference(model: Any, config: RunConfig, splits: Any, out: str, from_logits: bool,
                    verbose: int) -> Any:
    """The unpruned network trained on the run's schedule (``--reference``).

    ``model`` still holds the initial weights the pruned run started from (prune_to_budget
    copies it), so the two runs differ only in the pruning. The trained model is saved as
    ``reference.keras``; a run started again loads it instead of training it again (a
    reference training that was interrupted starts over).
    """
    keras = _keras.keras_of(model)
    path = os.path.join(out, "reference.keras")
    if os.path.exists(path):
        model = keras.models.load_model(path, compile=False)
    else:
        keras.utils.set_random_seed(config.seed)
        _compile(model, config, keras, from_logits, steps_per_epoch=splits.steps_per_epoch)
        model.fit(splits.train, epochs=config.epochs, verbose=_fit_verbosity(verbose),
                  shuffle=False)
        model.save(path)
    _compile(model, config, keras, from_logits, steps_per_epoch=1)
    return model


def build_model(config: RunConfig, input_shape: tuple[int, ...], num_classes: int,
                keras: Any) -> Any:
    """The model ``config.model`` names, for the dataset's input shape and classes.

    keras.applications models output logits. Built from scratch (no ``config.weights``), their
    BatchNorm momentum is lowered from Keras' 0.999 to 0.9: with 0.999 the moving statistics
    trail the weights by thousands of steps, and a short run evaluates to chance.

    Raises:
        ValueError: an unknown model name, or a loaded model whose input/output does not fit.
    """
    name = config.init or config.model
    if name.endswith(".keras"):
        model = keras.models.load_model(name, compile=False)
        expected = (None, *input_shape)
        if tuple(model.input_shape) != expected:
            raise ValueError(f"{name} takes inputs of shape {model.input_shape}; the dataset "
                             f"gives {expected}. Pass --image_size or another dataset.")
        return model
    if name.lower().startswith("resnet") and name[6:].isdigit():
        return cifar_resnet(int(name[6:]), num_classes, input_shape, keras=keras)
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise ValueError(f"Unknown model {name!r}: use resnet20/32/44/56/110 (CIFAR ResNets), a "
                         f"keras.applications name such as MobileNetV2, or a .keras file.")
    if config.weights:
        base = constructor(weights=config.weights, include_top=False, pooling="avg",
                           input_shape=input_shape)
        outputs = keras.layers.Dense(num_classes, name="logits")(base.output)
        return keras.Model(base.input, outputs, name=base.name)
    model = constructor(weights=None, input_shape=input_shape, classes=num_classes,
                        classifier_activation=None)
    for layer in model.layers:  # moving statistics that keep up with a from-scratch run
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = min(layer.momentum, FROM_SCRATCH_BN_MOMENTUM)
    return model


def _claim_run_dir(out: str, config: RunConfig) -> None:
    """Writes config.json, or checks that the existing one has the same settings."""
    path = os.path.join(out, "config.json")
    settings = config.to_dict()
    if os.path.exists(path):
        with open(path) as file:
            previous = json.load(file)
        changed = sorted(k for k in settings.keys() | previous.keys()
                         if settings.get(k) != previous.get(k) and k != "out")
        if changed:
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                             f"resume it with the same settings, or choose another --out.")
        return
    with open(path, "w") as file:
        json.dump(settings, file, indent=2)


def _compile(model: Any, config: RunConfig, keras: Any, from_logits: bool,
             steps_per_epoch: int) -> None:
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=total)
    else:
        boundaries = [b * steps_per_epoch for b in config.lr_boundaries]
        values = [config.lr * 0.1 ** k for k in range(len(boundaries) + 1)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    optimizer = keras.optimizers.SGD(lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay or None)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])


def _training_callbacks(config: RunConfig, splits: Any, out: str, keras: Any,
                        from_logits: bool, verbose: int) -> list:
    started, written = {}, {"iterations": 0}
    allocation = _allocation_callback(config, splits, keras, from_logits, verbose)

    def epoch_end(epoch: int, logs: dict) -> None:
        logs.update(epoch_seconds=time.perf_counter() - started["epoch"])
        trace = getattr(allocation, "keep_ratio_trace", [])  # DSACallback's
        _append_trace(os.path.join(out, TRACE_FILE), trace[written["iterations"]:])
        written["iterations"] = len(trace)

    callbacks = [  # the allocation first: its epoch and batch updates precede the backup
        allocation,
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup")),
        keras.callbacks.LambdaCallback(  # epoch_seconds goes into the logs before CSVLogger
            on_epoch_begin=lambda epoch, logs: started.update(epoch=time.perf_counter()),
            on_epoch_end=epoch_end),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
    ]
    with contextlib.suppress(ImportError):
        import tensorboard  # noqa: F401  (optional)

        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")))
    return callbacks


def _append_trace(path: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Appends ADMM iterations ``(iteration, {group: keep ratio})`` to the trace CSV.

    Called at the end of each epoch with that epoch's iterations, so that a run resumed from
    its last finished epoch (which repeats the iterations of the interrupted one) records
    every iteration once.
    """
    if not rows:
        return
    groups = list(rows[0][1])
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as file:
        writer = csv.writer(file)
        if new_file:
            writer.writerow(["iteration", *groups])
        for iteration, ratios in rows:
            writer.writerow([iteration, *(f"{ratios[g]:.6f}" for g in groups)])


def _allocation_callback(config: RunConfig, splits: Any, keras: Any, from_logits: bool,
                         verbose: int) -> Any:
    """DSACallback, or the OneShotCallback of ``config.allocation``'s baseline allocator."""
    if config.allocation == "dsa":
        make = DSACallback.paper if config.dsa_paper else DSACallback
        return make(splits.alpha, warmup_epochs=config.warmup_epochs,
                    update_every=config.update_every, verbose=int(verbose > 0),
                    **({} if config.allocate_by is None else {"allocate_by": config.allocate_by}))
    data = {"data": splits.train, "loss": keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits)} if config.allocation == "taylor" else {}
    allocate = baseline_allocator(config.allocation, config.budget, resource=config.resource,
                                  round_to=config.round_to,
                                  latency_table=config.latency_table, **data)
    return OneShotCallback(allocate, warmup_epochs=config.warmup_epochs, bn_data=splits.alpha,
                           verbose=int(verbose > 0))


def _accuracy(model: Any, dataset: Any) -> float:
    return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"


def _fit_verbosity(verbose: int) -> int | str:
    if verbose == 1 and not os.isatty(1):
        return 2  # one line per epoch when the output is a file or a pipe
    return verbose


def _read_history(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [{k: None if v in ("", "NA", None) else float(v) for k, v in row.items()}
                for row in csv.DictReader(file)]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tf.Tensor):
        return value.numpy().tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _Log:
    """Announces and times the phases of a run."""

    def __init__(self, verbose: int):
        self.verbose = verbose
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[dsa-tf] {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.say(f"{name} ...")
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.say(f"{name} done in {self.timings[name]:.1f} s")
