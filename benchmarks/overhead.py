"""Training-step overhead of DSA's channel gates, next to tfmot's prune_low_magnitude.

Measures, in one run and side by side, the wall-clock time of one ``model.fit`` training step
at batch 128 (synthetic 32x32x3 images, 10 classes, a cached and prefetched ``tf.data``
pipeline, so input is not the bottleneck) of:

1. ``plain``: the CIFAR ResNet-20 of ``dsa_tf.models.cifar_resnet(20)`` (Keras 3), compiled
   with SGD(0.05, momentum 0.9) and SparseCategoricalCrossentropy(from_logits=True);
2. ``dsa``: the same model gated with ``dsa_tf.prune_to_budget(model, budget)`` and trained
   with ``dsa_tf.DSACallback(alpha_data, warmup_epochs=0, update_every=20, verbose=0)``, so
   that every measured step is in the allocation phase: the per-step resampling of every
   group's mask (importance refresh, keep probabilities by bisection, Bernoulli draw: one
   traced call before every batch), the masks applied at every gate call point, and one ADMM
   iteration (Theta step on an alpha batch, z steps, dual update)
   every 20 steps are all included. The script checks that the allocation never ends during
   the measurement (the gates' ``mode`` stays 1 and the ``dsa_phase`` log stays 1);
3. in a subprocess with ``TF_USE_LEGACY_KERAS=1`` (tfmot only works with tf_keras, and is never
   imported in the Keras 3 process): the tf_keras ResNet-20 (``cifar_resnet(20,
   keras=tf_keras)``) plain, and wrapped in tfmot's ``prune_low_magnitude`` (ConstantSparsity
   0.5, trained with ``UpdatePruningStep``), so the tfmot ratio is tf_keras against tf_keras.

Method: every variant first runs a discarded warm-up ``fit`` (tracing; for ``dsa`` it covers
one ADMM iteration, so the ADMM function is traced too). Then ``--rounds`` rounds interleave
the variants (plain, dsa, plain, dsa, ...: machine drift hits both alike); each round is one
``fit`` epoch of ``--steps + 1`` steps, and a callback placed after all others stamps the end of
every batch. The step time of a round is the time from the end of its first batch to the end
of its last, divided by ``--steps``: every cost between two steps (callbacks included) counts.
With ``--steps`` a multiple of ``update_every`` each round contains exactly its share of ADMM
iterations. The reported figure is the median over rounds; the ratio is gated / plain.

DSACallback traces its functions once per model, so the rounds (one ``fit`` each) reuse them.
A subclass of it times the callback's own hooks, which gives a breakdown of the gated step:
the mask resampling (``on_train_batch_begin``), the ADMM iteration, and the rest (the gated
train step itself). Unless ``--no-breakdown`` is given, one more variant is interleaved: the
gated model trained without the callback (its masks stay fixed), the in-graph cost of the
gates alone. Wall-clock and process CPU time
(``time.process_time``, all threads) are both reported; on a loaded machine the CPU figures
are the steadier ones.

The tfmot model uses ``ConstantSparsity(0.5, begin_step=0, frequency=update_every)``, so every
timed round also contains one tfmot mask update (with tfmot's default frequency of 100 none
would fall into the short measurement).

Acceptance target, printed as PASS/FAIL: DSA step time ratio (gated / plain) <= 1.15. The exit
status is 0 on PASS. The 1-minute load average (``os.getloadavg``) is sampled during the run
and reported: above 2 on this 2-core machine means another job competed for the CPU.

Run from the repository root (the defaults, 3 rounds x 40 steps, take about 8-10 minutes on
2 CPU cores):

    .venv/bin/python benchmarks/overhead.py
    .venv/bin/python benchmarks/overhead.py --rounds 5 --steps 60 --no-breakdown
    .venv/bin/python benchmarks/overhead.py --no-tfmot --budget 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dsa_tf  # noqa: E402

TARGET_RATIO = 1.15
RESULT_MARKER = "OVERHEAD_RESULT "
LOADS: list[float] = []


def sample_load() -> None:
    LOADS.append(os.getloadavg()[0])


def dataset(images: int, batch: int, seed: int) -> tf.data.Dataset:
    """Synthetic CIFAR-shaped batches, cached in memory, repeated, prefetched."""
    rng = np.random.default_rng(seed)
    x = rng.random((images, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, images).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    return data.cache().repeat().prefetch(tf.data.AUTOTUNE)


def compile_model(model: Any, keras: Any) -> Any:
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def make_timer(keras: Any) -> Any:
    """A callback stamping wall (and process CPU) time at the end of every training batch."""

    class BatchEndTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.ends, self.cpu_ends = [], []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

        def step_time(self) -> float:
            if len(self.ends) < 2:
                return float("nan")
            return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

        def cpu_step_time(self) -> float:
            if len(self.cpu_ends) < 2:
                return float("nan")
            return (self.cpu_ends[-1] - self.cpu_ends[0]) / (len(self.cpu_ends) - 1)

    return BatchEndTimer()


def run_fit(model: Any, data: Any, steps: int, callbacks: list) -> Any:
    return model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0,
                     shuffle=False)


def measure(variants: dict[str, Any], timer: Any, rounds: int, steps: int,
            log: Any) -> tuple[dict[str, list], dict[str, list]]:
    """Interleaves the variants for ``rounds`` rounds; each entry runs ``fit(steps + 1)``.

    Returns the wall-clock and the process-CPU step times, per variant and round.
    """
    wall: dict[str, list] = {name: [] for name in variants}
    cpu: dict[str, list] = {name: [] for name in variants}
    for r in range(rounds):
        for name, fit in variants.items():
            sample_load()
            fit(steps + 1)
            wall[name].append(timer.step_time())
            cpu[name].append(timer.cpu_step_time())
            log(f"round {r + 1}/{rounds} {name}: {wall[name][-1] * 1000:.0f} ms/step "
                f"(CPU {cpu[name][-1] * 1000:.0f} ms/step)")
    sample_load()
    return wall, cpu


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- Keras 3 / DSA
def make_dsa_callback(alpha_data: Any, update_every: int) -> Any:
    class TimedDSACallback(dsa_tf.DSACallback):
        """DSACallback timing its batch hooks."""

        def __init__(self) -> None:
            super().__init__(alpha_data, warmup_epochs=0, update_every=update_every, verbose=0)
            self.begin_times: list[float] = []
            self.admm_times: list[float] = []
            self.end_times: list[float] = []

        def reset(self) -> None:
            self.begin_times, self.admm_times, self.end_times = [], [], []

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            start = time.perf_counter()
            super().on_train_batch_begin(batch, logs)
            self.begin_times.append(time.perf_counter() - start)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            start = time.perf_counter()
            admm_before = float(self.gates[0].admm_step.numpy())
            super().on_train_batch_end(batch, logs)
            elapsed = time.perf_counter() - start
            ran = float(self.gates[0].admm_step.numpy()) != admm_before
            (self.admm_times if ran else self.end_times).append(elapsed)

    return TimedDSACallback()


def keras3_part(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    data = dataset(args.batch * args.images_batches, args.batch, seed=0)
    alpha = dataset(args.batch * 4, args.batch, seed=1)
    plain = compile_model(dsa_tf.models.cifar_resnet(20), keras)
    gated = compile_model(dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), args.budget),
                          keras)
    gates = dsa_tf.allocation.gated_model.gates_of(gated)
    callback = make_dsa_callback(alpha, args.update_every)
    timer = make_timer(keras)
    phases: list[float] = []
    breakdown: dict[str, list] = {"refresh": [], "admm": [], "end_other": [], "admm_count": []}

    def fit_plain(steps: int) -> float:
        run_fit(plain, data, steps, [timer])
        return timer.step_time()

    def fit_dsa(steps: int) -> float:
        callback.reset()
        history = run_fit(gated, data, steps, [callback, timer])
        phases.append(history.history["dsa_phase"][-1])
        modes = {int(g.mode.numpy()) for g in gates}
        if modes != {1} or phases[-1] != 1.0:
            raise SystemExit(f"The allocation left phase 1 during the measurement (modes "
                             f"{modes}, dsa_phase {phases[-1]}); rerun with a lower --budget.")
        # the first batch's hooks fall outside the measured window (end of batch 1 onwards)
        n = len(timer.ends) - 1
        breakdown["refresh"].append(sum(callback.begin_times[1:]) / n)
        breakdown["admm"].append(sum(callback.admm_times) / n)
        breakdown["end_other"].append(sum(callback.end_times[1:]) / n)
        breakdown["admm_count"].append(len(callback.admm_times))
        return timer.step_time()

    def fit_gated_no_callback(steps: int) -> float:
        run_fit(gated, data, steps, [timer])  # the gates apply their current, fixed masks
        return timer.step_time()

    t0 = time.perf_counter()
    say("Keras 3: warm-up (tracing; the gated warm-up runs one ADMM iteration)")
    fit_plain(args.warmup_steps)
    run_fit(gated, data, args.update_every, [callback, timer])
    if {int(g.mode.numpy()) for g in gates} != {1}:
        raise SystemExit("The gates are not in the allocation phase after the warm-up.")
    admm_single = callback.admm_times[0] if callback.admm_times else float("nan")
    warmup_s = time.perf_counter() - t0
    variants = {"plain": fit_plain, "dsa": fit_dsa}
    if args.breakdown:
        variants["gated_no_callback"] = fit_gated_no_callback
    times, cpu = measure(variants, timer, args.rounds, args.steps,
                         lambda m: say(f"Keras 3: {m}"))
    ratios = dsa_tf.keep_ratios(gated)
    return {
        "times": times, "cpu": cpu, "breakdown": breakdown, "warmup_s": warmup_s,
        "admm_traced_first_call_s": admm_single,
        "admm_iterations": int(gates[0].admm_step.numpy()),
        "dsa_phase": phases, "gate_modes": sorted({int(g.mode.numpy()) for g in gates}),
        "gates": len(gates), "min_keep_ratio": min(ratios.values()),
        "gated_params": int(gated.count_params()), "plain_params": int(plain.count_params()),
        "keras": keras.__version__,
    }


# ------------------------------------------------------------------------ tf_keras / tfmot
def tfmot_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside the TF_USE_LEGACY_KERAS=1 subprocess."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    sparsity = tfmot.sparsity.keras
    data = dataset(args.batch * args.images_batches, args.batch, seed=0)
    plain = compile_model(dsa_tf.models.cifar_resnet(20, keras=tf_keras), tf_keras)
    pruned = sparsity.prune_low_magnitude(
        dsa_tf.models.cifar_resnet(20, keras=tf_keras),
        pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=0,
                                                   frequency=args.update_every))
    compile_model(pruned, tf_keras)
    timer = make_timer(tf_keras)

    def fit_plain(steps: int) -> float:
        run_fit(plain, data, steps, [timer])
        return timer.step_time()

    def fit_tfmot(steps: int) -> float:
        run_fit(pruned, data, steps, [sparsity.UpdatePruningStep(), timer])
        return timer.step_time()

    t0 = time.perf_counter()
    say("tf_keras: warm-up (tracing)")
    fit_plain(args.warmup_steps)
    fit_tfmot(args.warmup_steps)
    warmup_s = time.perf_counter() - t0
    times, cpu = measure({"plain": fit_plain, "tfmot": fit_tfmot}, timer, args.rounds,
                         args.steps, lambda m: say(f"tf_keras: {m}"))
    masks = [w.numpy() for w in pruned.weights if w.name.split("/")[-1].startswith("mask")]
    zeros = sum(int((m == 0).sum()) for m in masks) / max(1, sum(m.size for m in masks))
    return {"times": times, "cpu": cpu, "warmup_s": warmup_s, "mask_zero_fraction": zeros,
            "loads": LOADS, "tf_keras": tf_keras.__version__,
            "tfmot": tfmot.__version__ if hasattr(tfmot, "__version__") else "?"}


def tfmot_part(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "tfmot",
               "--batch", str(args.batch), "--images-batches", str(args.images_batches),
               "--rounds", str(args.rounds), "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps),
               "--update-every", str(args.update_every)]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode or not lines:
        raise SystemExit(f"The tf_keras/tfmot subprocess failed (exit {done.returncode}).")
    return json.loads(lines[-1][len(RESULT_MARKER):])


# ------------------------------------------------------------------------------- report
def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=40,
                        help="timed steps per round (a multiple of --update-every)")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="steps of the discarded warm-up fit (the gated one runs "
                             "--update-every steps)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images-batches", type=int, default=8,
                        help="synthetic data set size, in batches")
    parser.add_argument("--budget", type=float, default=0.5, help="DSA FLOPs budget")
    parser.add_argument("--update-every", type=int, default=20)
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the gated variants without the callback (stochastic and "
                             "open gates)")
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tfmot subprocess")
    parser.add_argument("--worker", choices=["tfmot"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "tfmot":
        print(RESULT_MARKER + json.dumps(tfmot_worker(args)), flush=True)
        return 0
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        raise SystemExit("Run the main process under Keras 3 (unset TF_USE_LEGACY_KERAS).")

    started = time.perf_counter()
    sample_load()
    k3 = keras3_part(args)
    tm = None if args.no_tfmot else tfmot_part(args)
    total = time.perf_counter() - started
    loads = LOADS + (tm["loads"] if tm else [])

    labels = {
        "plain": "ResNet-20 plain (Keras 3)",
        "dsa": f"ResNet-20 + DSA gates, allocation, budget {args.budget} (Keras 3)",
        "gated_no_callback": "ResNet-20 + DSA gates, fixed masks, no callback (Keras 3)",
    }
    t, c = k3["times"], k3["cpu"]
    rows = [(labels[name], median_ms(t[name]), median_ms(c[name]),
             median_ms(t[name]) / median_ms(t["plain"]),
             median_ms(c[name]) / median_ms(c["plain"])) for name in t]
    if tm:
        tt, tc = tm["times"], tm["cpu"]
        rows += [(label, median_ms(tt[name]), median_ms(tc[name]),
                  median_ms(tt[name]) / median_ms(tt["plain"]),
                  median_ms(tc[name]) / median_ms(tc["plain"]))
                 for name, label in (("plain", "ResNet-20 plain (tf_keras)"),
                                     ("tfmot", "ResNet-20 + tfmot prune_low_magnitude 0.5 "
                                               "(tf_keras)"))]
    plain_ms, dsa_ms = median_ms(t["plain"]), median_ms(t["dsa"])
    ratio = dsa_ms / plain_ms

    print(f"\nTensorFlow {tf.__version__}, Keras {k3['keras']}"
          + (f", tf_keras {tm['tf_keras']}, tfmot {tm['tfmot']}" if tm else "")
          + f"; {os.cpu_count()} CPU cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} timed steps, "
          f"update_every {args.update_every}; total run {total:.0f} s")
    print(f"1-min load average: max {max(loads):.2f}, median {statistics.median(loads):.2f}"
          + ("  (above 2: another job shared the CPU)" if max(loads) > 2 else ""))
    print("\n| model | step time, median (ms) | ratio | CPU time / step, median (ms) | CPU ratio |"
          "\n|---|---:|---:|---:|---:|")
    for name, ms, cpu_ms, r, cr in rows:
        print(f"| {name} | {ms:.0f} | {r:.3f} | {cpu_ms:.0f} | {cr:.3f} |")
    print("(ratios against the plain model of the same Keras flavour; CPU time is the process's "
          "user + system time, summed over threads)")
    print("\nper-round wall step times (ms):")
    for name, values in list(t.items()) + (list(tm["times"].items()) if tm else []):
        print(f"  {name}: {', '.join(f'{v * 1000:.0f}' for v in values)}")

    b = k3["breakdown"]
    refresh, admm, other = (median_ms(b[k]) for k in ("refresh", "admm", "end_other"))
    print(f"\nDSA gated step breakdown (medians over rounds, ms per step): plain step "
          f"{plain_ms:.0f}; gated step {dsa_ms:.0f} = train step and Keras overhead "
          f"{dsa_ms - refresh - admm - other:.0f} + mask resampling {refresh:.1f} + ADMM "
          f"{admm:.1f} (amortised; {b['admm_count']} iterations per round) + other callback "
          f"work {other:.1f}")
    print(f"ADMM iterations so far {k3['admm_iterations']}, gate modes {k3['gate_modes']}, "
          f"dsa_phase per round {k3['dsa_phase']}, smallest keep ratio "
          f"{k3['min_keep_ratio']:.3f} ({k3['gates']} gates)")
    if tm:
        print(f"tfmot: fraction of mask entries at zero {tm['mask_zero_fraction']:.3f}")
    passed = ratio <= TARGET_RATIO
    print(f"\n{'PASS' if passed else 'FAIL'}: DSA gated/plain step time ratio {ratio:.3f} "
          f"(target <= {TARGET_RATIO})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
