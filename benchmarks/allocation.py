"""Which allocator chooses the best widths: DSA against uniform, magnitude and Taylor, side by side.

Every arm sees the same data, the same initial weights (per seed), the same batches in the
same order (``--batch_order=per_arm``: the seed's datasets are built anew for every arm,
after setting the global seed, which tf.data's seeded shuffles also depend on; checked: the
magnitude arm alone and after the uniform arm gives the same widths and accuracy) and the
same training schedule; only who chooses the per-group widths differs. The results of
earlier versions of this script were measured with ``--batch_order=shared``: the datasets
built once per seed, each ``fit`` taking the next shuffle, so an arm's batch order depended
on the runs before it in the process, which alone moved an arm by 1-2 points per seed (see
BENCHMARKS.md, "Why DSA's widths follow noise"); rows without the setting are those.

* ``dsa``: ``prune_to_budget(model, budget, resource)`` + ``DSACallback(alpha)`` with every
  other setting at its default (warm-up, allocation and fine-tuning planned from the fit);
* ``dsa_paper``: the same with ``DSACallback.paper(alpha)``, the paper's settings where the
  defaults depart from them. Results files written before the defaults changed (DSA rows
  without ``dsa_defaults``) ran the paper's: their ``dsa`` rows are read as ``dsa_paper``
  and their ``dsa(...)`` rows as ``dsa_paper(...)``;
* ``uniform``, ``magnitude``, ``taylor``: the same gated model trained by the same ``fit``
  with ``OneShotCallback``, which applies ``uniform_allocation``, ``magnitude_allocation`` or
  ``taylor_allocation`` (4 training batches) once, at the step where DSA's allocation begins
  (after the same warm-up), and trains the pruned network for the rest of the fit;
* ``random``: a control of how much the widths matter in a cell: the same, with widths drawn
  at random around the uniform allocation (:func:`random_allocation`: each group's keep ratio
  the uniform one times a log-normal factor, spread ``RANDOM_SPREAD``, all scaled to meet the
  budget), each group keeping its most important channels as the other allocators do. An
  allocator that chooses widths well should beat it; where it is level with uniform, the
  cell cannot tell allocators apart.

Flows (``--flows``):

* ``scratch``: random initial weights, ``--epochs`` epochs (DSA's one-run flow);
* ``pretrained``: the unpruned network trained for ``--epochs`` epochs once per seed (cached
  in ``--cache_dir``, outside the repository), then each arm prunes it at the first step
  (``warmup_epochs=0``) and fine-tunes for ``--finetune_epochs`` epochs at
  ``--finetune_lr`` (the prune + fine-tune flow of most users);
* ``architecture``: the widths each method chose in the ``scratch`` flow (same seed), as a
  plain network re-initialised at random (``keras.models.clone_model``) and trained from
  scratch for ``--epochs`` epochs: the quality of the allocation alone, without the training
  dynamics of the method that found it.

The ``unpruned`` row (in the ``pretrained`` flow) is the full network trained for
``--epochs`` epochs from the same initial weights: the reference of every flow.

Every arm's final network has its BatchNorm statistics re-estimated for its final weights
on DSA's alpha data (32 batches, or all there are): DSA's callback does it when fit ends after
fine-tuning (``DSACallback``'s ``bn_batches``), and the script does the same with
``reestimate_batchnorm`` for the baselines, the unpruned network and the architecture flow,
so that no arm is judged with moving averages that trail its weights. Rows measured before
(setting ``end_of_fit_bn`` 0: no arm re-estimated when its fit ended) are read with
``--report --end_of_fit_bn=0``.

Cells (``--cells``) are ``architecture:budget``; the architecture fixes the resource:

* ``resnet``: ``dsa_tf.models.cifar_resnet(--depth)``, a FLOPs budget (residual coupling:
  each stage's blocks share one group);
* ``vgg``: eight 3x3 conv-BN-ReLU layers of 16, 16, 32, 32, 64, 64, 128, 128 channels with
  max-pooling after every second, global pooling and a Dense head; 76% of its parameters are
  in the last two convolutions; a params budget.

Data: a seeded subset (per seed) of ``--train_examples`` CIFAR-10 training images (90% weight
training, 10% DSA's alpha data, used by no other arm), resized once to ``--image_size``
(default 16x16: a quarter of the FLOPs of 32x32, so that the comparison fits in hours on 2 CPU
cores), CIFAR augmentation (pad-crop, flip), the full 10,000-image test split. SGD momentum
0.9, batch 128, lr ``--lr`` with cosine decay to 0 over the fit, weight decay 5e-4. Accuracy
is the stripped model's top-1 on the test split.

``--dsa_options name=value ...`` passes DSACallback arguments to the DSA arm (values read as
JSON, e.g. ``theta_batch_statistics=false``); such an arm is reported as
``dsa(name=value,...)`` beside the default ``dsa``, with its own scratch widths for the
``architecture`` flow, so a change to DSA is measured against the same baselines.

Each run's result is appended to ``--results`` (JSON lines) as soon as it finishes, and runs
already there (same settings) are skipped: an interrupted benchmark resumes, and a cell is
rerun by deleting its lines. ``--report`` prints the tables from the results file only.
Tables: per cell, flow and method, mean and standard deviation over seeds of the test
accuracy, each seed's difference to DSA (method minus DSA, in points), the mean resource
ratio of the stripped models and the mean wall time of a run; then per cell and flow the
mean of each baseline's per-seed differences to DSA with its standard error; then the widths
per group.

Command of the results in BENCHMARKS.md (section "Allocators side by side"; the default cells,
resnet:0.25 and vgg:0.15, 3 seeds, about 2.5 hours on 2 CPU cores; the moderate cell there is
``--cells resnet:0.5 --seeds 0``):

    .venv/bin/python benchmarks/allocation.py --data_dir=../shared/tensorflow_datasets

To scale to the paper's setting, run ``--depth=56 --train_examples=0 --epochs=300
--finetune_epochs=...`` (the whole training split, DSA's 300-epoch schedule; days on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf import _keras  # noqa: E402
from dsa_tf.allocation.budget import meets, validated_budget  # noqa: E402
from dsa_tf.allocation.callback import BN_BATCHES  # noqa: E402
from dsa_tf.allocation.importance import channel_importance, top_channels  # noqa: E402
from dsa_tf.allocation.keep_process import kept_count  # noqa: E402
from dsa_tf.allocation.largest_passing import largest_passing  # noqa: E402
from dsa_tf.allocation.one_shot import baseline_allocator  # noqa: E402

METHODS = ("dsa", "dsa_paper", "uniform", "magnitude", "taylor", "random")
BASELINES = METHODS[2:]
RANDOM_SPREAD = 0.5  # standard deviation of the log of the random allocation's factors
DSA_DEFAULTS = "2026-12-04"  # when DSACallback's defaults last changed; kept in DSA rows
FLOWS = ("scratch", "pretrained", "architecture")
RESOURCES = {"resnet": "flops", "vgg": "params"}
VGG_WIDTHS = (16, 16, 32, 32, 64, 64, 128, 128)
TAYLOR_BATCHES = 4
WEIGHT_DECAY = 5e-4


def build(arch: str, args: argparse.Namespace, keras: Any, num_classes: int = 10) -> Any:
    """The network of ``arch`` for ``--image_size`` RGB inputs, with fresh weights."""
    shape = (args.image_size, args.image_size, 3)
    if arch == "resnet":
        return dsa_tf.models.cifar_resnet(args.depth, num_classes, shape, keras=keras)
    layers = keras.layers
    inputs = keras.Input(shape)
    x = inputs
    for i, width in enumerate(VGG_WIDTHS):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
        if i % 2 == 1:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="vgg8")


def random_allocation(model: Any, budget: float, resource: str, seed: int) -> dict:
    """Widths drawn at random: group k keeps the ratio ``s * f_k`` (at most 1), f_k log-normal
    (``RANDOM_SPREAD``, seeded), s the largest that meets the budget at integer counts
    (:func:`dsa_tf.allocation.largest_passing.largest_passing`, as
    :func:`dsa_tf.uniform_allocation` finds its one ratio); each group keeps its
    most important channels."""
    resources, fractions, round_to = validated_budget(model, budget, resource, 1, None, ())
    plan = resources.plan
    channels = np.array([g.channels for g in plan.prunable])
    factors = np.exp(np.random.default_rng(seed).normal(0.0, RANDOM_SPREAD, len(channels)))

    def counts(scale: float) -> np.ndarray:
        return np.asarray(kept_count(np.minimum(scale * factors, 1.0), channels, 1, round_to))

    # at 1 / min(f) every group is whole
    scale = largest_passing(lambda s: meets(resources, fractions, counts(s)), 0.0,
                            1.0 / factors.min())
    return top_channels(plan, channel_importance(plan), counts(scale))


def compile_for(model: Any, lr: float, epochs: int, steps: int, keras: Any) -> Any:
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=WEIGHT_DECAY),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model: Any, splits: Any, keras: Any) -> float:
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return float(model.evaluate(splits.test, verbose=0, return_dict=True)["accuracy"])


def pretrained(arch: str, seed: int, splits: Any, args: argparse.Namespace, keras: Any) -> Any:
    """The unpruned network trained for ``--epochs`` (cached per architecture and seed)."""
    name = (f"{arch}{args.depth if arch == 'resnet' else ''}_n{args.train_examples}"
            f"_e{args.epochs}_lr{args.lr}_seed{seed}.keras")
    path = os.path.join(args.cache_dir, name)
    if not os.path.exists(path):
        keras.utils.set_random_seed(seed)
        model = compile_for(build(arch, args, keras), args.lr, args.epochs,
                            splits.steps_per_epoch, keras)
        model.fit(splits.train, epochs=args.epochs, verbose=0)
        os.makedirs(args.cache_dir, exist_ok=True)
        model.save(path)
    return keras.models.load_model(path, compile=False)


def run_one(arch: str, budget: float, flow: str, method: str, seed: int, splits: Any,
            widths: dict | None, args: argparse.Namespace) -> dict:
    """Trains one arm and returns its result row."""
    keras = _keras.default_keras()
    keras.backend.clear_session()
    resource = RESOURCES[arch]
    start = time.perf_counter()
    if flow == "pretrained":
        model, epochs, lr = pretrained(arch, seed, splits, args, keras), \
            args.finetune_epochs, args.finetune_lr
    else:
        keras.utils.set_random_seed(seed)
        model, epochs, lr = build(arch, args, keras), args.epochs, args.lr
    reference = model
    keras.utils.set_random_seed(seed)
    row: dict[str, Any] = {}
    if method == "unpruned":  # the pre-trained network, as it is
        final = model
    elif flow == "architecture":  # the chosen widths, re-initialised and trained
        small = dsa_tf.strip(model, {g: range(k) for g, k in widths.items()})
        keras.utils.set_random_seed(seed)
        final = compile_for(keras.models.clone_model(small), lr, epochs,
                            splits.steps_per_epoch, keras)
        final.fit(splits.train, epochs=epochs, verbose=0)
    else:
        gated = dsa_tf.prune_to_budget(model, budget, resource=resource, seed=seed)
        warmup = 0 if flow == "pretrained" else None
        if is_dsa(method):
            make = (dsa_tf.DSACallback.paper if method.startswith("dsa_paper")
                    else dsa_tf.DSACallback)
            callback = make(splits.alpha, warmup_epochs=warmup, verbose=0, **args.dsa_options)
            row["dsa_defaults"] = DSA_DEFAULTS
        else:
            taylor = {"data": splits.train, "batches": TAYLOR_BATCHES,
                      "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
            allocate = (
                (lambda m: random_allocation(m, budget, resource, seed)) if method == "random"
                else baseline_allocator(method, budget, resource=resource,
                                        **(taylor if method == "taylor" else {})))
            callback = dsa_tf.OneShotCallback(allocate, warmup_epochs=warmup, verbose=0)
        compile_for(gated, lr, epochs, splits.steps_per_epoch, keras)
        gated.fit(splits.train, epochs=epochs, verbose=0, callbacks=[callback])
        status = dsa_tf.budget_status(gated)
        row["met_by"] = status["frozen_by"]
        row["admm_iterations"] = status["admm_iterations"]
        final = dsa_tf.strip(gated)
        row["widths"] = {r["group"]: r["kept"] for r in dsa_tf.allocation_report(gated)}
    if not is_dsa(method):  # DSA's callback re-estimated them when fit ended
        dsa_tf.reestimate_batchnorm(final, splits.alpha, args.end_of_fit_bn)
    row.update(
        arch=arch, budget=budget, flow=flow, method=method, seed=seed,
        accuracy=accuracy(final, splits, keras),
        flops_ratio=dsa_tf.count_flops(final) / dsa_tf.count_flops(reference),
        params_ratio=dsa_tf.count_params(final) / dsa_tf.count_params(reference),
        seconds=time.perf_counter() - start, settings=settings(args))
    return row


def dsa_label(arm: str, options: dict) -> str:
    """The name of a DSA arm (``dsa`` or ``dsa_paper``): as it is with no options,
    ``arm(key=value,...)`` otherwise."""
    if not options:
        return arm
    return f"{arm}(" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) + ")"


def is_dsa(method: str) -> bool:
    return method.split("(")[0] in ("dsa", "dsa_paper")


def methods_of(rows: list[dict]) -> list[str]:
    """unpruned, DSA with the defaults and the paper's, the DSA variants (as first run),
    then the baselines."""
    variants = list(dict.fromkeys(r["method"] for r in rows if "(" in r["method"]))
    return ["unpruned", "dsa", "dsa_paper", *variants, *BASELINES]


def keyword(text: str) -> tuple[str, Any]:
    """``name=value`` of ``--dsa_options``; the value is read as JSON, else kept as text."""
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def settings(args: argparse.Namespace) -> dict:
    """What makes two runs of the same arm comparable."""
    return {k: getattr(args, k) for k in ("depth", "image_size", "train_examples", "epochs",
                                          "finetune_epochs", "lr", "finetune_lr",
                                          "batch_order", "end_of_fit_bn")}


def key(row: dict) -> tuple:
    return (row["arch"], row["budget"], row["flow"], row["method"], row["seed"],
            json.dumps(row["settings"], sort_keys=True))


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    for row in rows:  # measured before batch_order was a setting
        row["settings"].setdefault("batch_order", "shared")
        row["settings"].setdefault("end_of_fit_bn", 0)  # measured before every arm did
        if is_dsa(row["method"]) and "dsa_defaults" not in row:  # with the paper's defaults
            row["method"] = row["method"].replace("dsa", "dsa_paper", 1)
    return rows


def run(args: argparse.Namespace) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    done = {key(row): row for row in read_results(args.results)}
    mine = settings(args)
    for cell in args.cells:
        arch, budget = cell.split(":")[0], float(cell.split(":")[1])
        for seed in args.seeds:
            def load(seed: int = seed) -> Any:
                return dsa_tf.data.load("cifar10", data_dir=args.data_dir, batch_size=128,
                                        train_examples=args.train_examples or None,
                                        seed=seed, image_size=args.image_size)

            splits = load() if args.batch_order == "shared" else None
            for flow in args.flows:
                for method in ("unpruned", *[dsa_label(m, args.dsa_options) if is_dsa(m)
                                              else m for m in args.methods]):
                    if flow != "pretrained" and method == "unpruned":
                        continue  # the pre-trained network is the unpruned reference
                    wanted = (arch, budget, flow, method, seed, json.dumps(mine, sort_keys=True))
                    if wanted in done:
                        continue
                    widths = None
                    if flow == "architecture" and method != "unpruned":
                        source = done.get((arch, budget, "scratch", method, seed, wanted[-1]))
                        if source is None:
                            print(f"skipped {wanted[:5]}: no scratch run to take widths from")
                            continue
                        widths = source["widths"]
                    if args.batch_order == "per_arm":  # every arm: the seed's first shuffle
                        # (tf.data's seeded shuffles also depend on the global seed)
                        _keras.default_keras().utils.set_random_seed(seed)
                        splits = load()
                    row = run_one(arch, budget, flow, method, seed, splits, widths, args)
                    done[key(row)] = row
                    with open(args.results, "a") as file:
                        file.write(json.dumps(row) + "\n")
                    print(f"{arch} {budget} {flow:12} {method:9} seed {seed}: accuracy "
                          f"{row['accuracy']:.4f}, {RESOURCES[arch]} "
                          f"{row[RESOURCES[arch] + '_ratio']:.3f} ({row['seconds']:.0f} s)",
                          flush=True)


def report(args: argparse.Namespace) -> None:
    """Markdown tables of every cell in the results file (for the current settings)."""
    mine = json.dumps(settings(args), sort_keys=True)
    rows = [r for r in read_results(args.results)
            if json.dumps(r["settings"], sort_keys=True) == mine]
    cells = sorted({(r["arch"], r["budget"]) for r in rows}, key=lambda c: (c[0], -c[1]))
    print(f"settings: {settings(args)}\n")
    print("| cell | flow | method | accuracy mean | std | per seed | minus DSA per seed "
          "(points) | resource ratio | time per run (s) |")
    print("|---|---|---|---:|---:|---|---|---:|---:|")
    for arch, budget in cells:
        resource = RESOURCES[arch]
        for flow in FLOWS:
            by_method = {m: sorted((r for r in rows if (r["arch"], r["budget"], r["flow"],
                                                        r["method"]) == (arch, budget, flow, m)),
                                   key=lambda r: r["seed"]) for m in methods_of(rows)}
            dsa = {r["seed"]: r["accuracy"] for r in by_method.get("dsa", [])}
            for method, runs in by_method.items():
                if not runs:
                    continue
                values = np.array([r["accuracy"] for r in runs])
                spread = values.std(ddof=1) if len(values) > 1 else float("nan")
                difference = ("" if method == "dsa" else ", ".join(
                    f"{100 * (r['accuracy'] - dsa[r['seed']]):+.2f}" for r in runs
                    if r["seed"] in dsa))
                ratio = np.mean([r[f"{resource}_ratio"] for r in runs])
                print(f"| {arch} {resource} {budget} | {flow} | {method} | "
                      f"{values.mean():.4f} | {spread:.4f} | "
                      f"{', '.join(f'{v:.4f}' for v in values)} | {difference} | "
                      f"{ratio:.3f} | {np.mean([r['seconds'] for r in runs]):.0f} |")
    print("\nMean of the per-seed differences to each DSA arm in points, baseline minus DSA "
          f"(standard error over the seeds):\n\n| cell | flow | DSA arm | "
          f"{' | '.join(BASELINES)} |\n|---|---|---|{'---:|' * len(BASELINES)}")
    for arch, budget in cells:
        for flow in FLOWS:
            cell = [r for r in rows if (r["arch"], r["budget"], r["flow"]) == (arch, budget, flow)]
            for arm in [m for m in methods_of(cell)
                        if is_dsa(m) and any(r["method"] == m for r in cell)]:
                dsa = {r["seed"]: r["accuracy"] for r in cell if r["method"] == arm}
                means = []
                for method in BASELINES:
                    diffs = np.array([100 * (r["accuracy"] - dsa[r["seed"]]) for r in cell
                                      if r["method"] == method and r["seed"] in dsa])
                    error = (diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1
                             else np.nan)
                    means.append(f"{diffs.mean():+.2f} ({error:.2f})" if len(diffs) else "")
                print(f"| {arch} {RESOURCES[arch]} {budget} | {flow} | {arm} | "
                      f"{' | '.join(means)} |")
    print("\nwidths per group (scratch flow, kept channels per seed):")
    order = methods_of(rows)
    for arch, budget in cells:
        for r in sorted((r for r in rows if (r["arch"], r["budget"], r["flow"]) ==
                         (arch, budget, "scratch") and "widths" in r),
                        key=lambda r: (order.index(r["method"]), r["seed"])):
            print(f"  {arch} {budget} {r['method']:9} seed {r['seed']}: "
                  f"{list(r['widths'].values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR"))
    parser.add_argument("--cells", nargs="+",
                        default=["resnet:0.25", "vgg:0.15"])
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=14, help="CIFAR ResNet depth (6n + 2).")
    parser.add_argument("--image_size", type=int, default=16,
                        help="Side of the (resized) CIFAR-10 images.")
    parser.add_argument("--train_examples", type=int, default=10_000,
                        help="CIFAR-10 training subset (0: all 50,000).")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--finetune_epochs", type=int, default=3)
    parser.add_argument("--finetune_lr", type=float, default=0.01)
    parser.add_argument("--cache_dir", default=os.path.expanduser(
        "~/.cache/dsa_tf/benchmarks"), help="Where the pre-trained networks are kept.")
    parser.add_argument("--results", default="runs/allocation.jsonl",
                        help="Results file (JSON lines), appended to and resumed from.")
    parser.add_argument("--dsa_options", nargs="*", default=[], type=keyword,
                        help="DSACallback arguments of the DSA arm, name=value (JSON values); "
                             "the arm is then reported as dsa(name=value,...).")
    parser.add_argument("--batch_order", default="per_arm", choices=("per_arm", "shared"),
                        help="per_arm: every arm sees the seed's batches in the same order; "
                             "shared: the order of the earlier results (one dataset per seed, "
                             "each fit takes its next shuffle).")
    parser.add_argument("--end_of_fit_bn", type=int, default=BN_BATCHES,
                        help="Alpha batches every arm's BatchNorm statistics are re-estimated "
                             "on when its fit ends; 0 reads the rows measured before any arm "
                             "did (with --report only: DSA's callback now always does).")
    parser.add_argument("--report", action="store_true", help="Only print the tables.")
    args = parser.parse_args()
    if args.end_of_fit_bn != BN_BATCHES and not args.report:
        parser.error(f"--end_of_fit_bn other than {BN_BATCHES} (DSACallback's bn_batches) "
                     f"only reads earlier rows, with --report.")
    args.dsa_options = dict(args.dsa_options)
    if not args.report:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
