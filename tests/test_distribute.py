"""dsa_tf under tf.distribute: MirroredStrategy and MultiWorkerMirroredStrategy on CPU.

Each run happens in fresh processes (tests/distributed_fit.py): MirroredStrategy needs two
logical CPUs configured before TensorFlow initialises its devices, and every
MultiWorkerMirroredStrategy worker is its own process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dsa_tf
from dsa_tf import _keras

HELPER = str(Path(__file__).with_name("distributed_fit.py"))
TIMEOUT = 600


def _start(mode, **env):
    return subprocess.Popen([sys.executable, HELPER, mode], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _report(process):
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _check_run(run, replicas, local_replicas):
    """The budget is met and frozen, strip meets it, every replica holds the same state."""
    assert run["replicas"] == replicas
    assert run["phases"][0] == 0 and run["phases"][-1] == 2
    assert run["flops_hard"] <= run["budget"]
    assert run["flops_stripped"] == pytest.approx(run["flops_hard"], abs=1e-6)
    assert run["strip_error"] < 1e-4
    for name, values in run["gates"].items():
        assert len(values) == local_replicas
        assert all(v == values[0] for v in values), name
    # One mask per weight step, the same on every replica; one ADMM iteration per weight step
    # (update_every=1), the last one meeting the budget and freezing the masks.
    steps = run["masks_per_step"]
    assert len(steps) == run["admm_steps"] - 1
    assert all(all(m == masks[0] for m in masks) for masks in steps)


@pytest.mark.keras3_only  # under tf_keras, the multi-worker test below distributes the fit
def test_mirrored_strategy_matches_a_single_device():
    report = _report(_start("mirrored"))
    single, mirrored = report["single"], report["mirrored"]
    _check_run(single, 1, 1)
    _check_run(mirrored, 2, 2)
    # The same schedule: the budget is reached after about as many ADMM iterations.
    assert abs(mirrored["admm_steps"] - single["admm_steps"]) <= 0.2 * single["admm_steps"]
    # The Theta gradient of a batch split 3 + 4 over two replicas is the whole batch's.
    grads = report["theta_gradients"]
    assert any(g != 0 for g in grads["single"])
    assert grads["mirrored"] == pytest.approx(grads["single"], rel=1e-4, abs=1e-9)
    assert "cannot be split over 2 replicas" in report["one_example_batch"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.skipif(not _keras.default_keras().__name__.startswith("tf_keras"),
                    reason="Keras 3's fit fails under MultiWorkerMirroredStrategy for any model "
                           "(keras-team/keras#20585); run under tf_keras (TF_USE_LEGACY_KERAS=1)")
def test_multi_worker_mirrored_strategy_keeps_workers_identical():
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [_start("worker", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})) for index in range(2)]
    try:
        runs = [_report(worker)["worker"] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for run in runs:
        _check_run(run, 2, 1)
    first, second = runs
    assert first["gates"] == second["gates"]
    assert first["masks_per_step"] == second["masks_per_step"]
    assert first["admm_steps"] == second["admm_steps"]


def test_steps_per_execution_above_one_is_refused(keras):
    import numpy as np
    import tensorflow as tf

    gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3)), 0.5)
    gated.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    x, y = np.zeros((4, 8, 8, 3), "float32"), np.zeros(4, "int64")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    with pytest.raises(ValueError, match="steps_per_execution=1, the model was compiled with 2"):
        gated.fit(data, epochs=1, verbose=0, callbacks=[dsa_tf.DSACallback(data, verbose=0)])
