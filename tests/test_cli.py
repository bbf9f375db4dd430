"""The dsa-tf command end to end on tagged_images: run, kill during allocation, resume, report."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import dsa_tf
from dsa_tf.run.config import preset
from dsa_tf.run.pipeline import _allocation_callback, build_model, run_pruning
from dsa_tf.run.report import load_report, summary_table

import tagged_images

BUDGET, EPOCHS = 0.6, 14
ARGS = ["--config=quick", "--model=resnet8", "--dataset=tagged_images", f"--budget={BUDGET}",
        "--batch_size=16", f"--epochs={EPOCHS}", "--warmup_epochs=1", "--update_every=1",
        "--train_examples=0", "--latency_runs=2", "--reference", "--verbose=2"]


def dsa_tf_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsa_tf", *args]


def kill_during_allocation(command: list[str], timeout: float = 300) -> str:
    """Runs ``command`` and kills it (SIGKILL) after its first finished allocation epoch."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stdout:
            output.append(line)
            if "dsa_phase: 1" in line or time.monotonic() > deadline:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return "".join(output)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run killed during the allocation and resumed to the end; the outputs of both.
    (Its tests are keras3_only: resuming is tested in both flavours in test_resume.py, and
    the pipeline under tf_keras by test_a_baseline_allocation_runs_on_dsa_schedule.)"""
    data_dir = tagged_images.prepare(str(tmp_path_factory.mktemp("tfds")))
    out = str(tmp_path_factory.mktemp("run"))
    command = dsa_tf_command("prune", *ARGS, f"--data_dir={data_dir}", f"--out={out}")
    first = kill_during_allocation(command)
    assert "dsa_phase: 1" in first, first[-3000:]
    assert not os.path.exists(os.path.join(out, "report.json"))
    assert os.path.isdir(os.path.join(out, "backup"))
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, data_dir, first, second.stdout


@pytest.mark.keras3_only
def test_resumed_run_continues_where_it_was_killed(run_dir):
    out, _, first, second = run_dir
    training = second.split("[dsa-tf] reference ...")[0]  # the DSA fit, before the reference
    assert f"Epoch 1/{EPOCHS}" in first and f"Epoch 1/{EPOCHS}" not in training
    assert f"Epoch {EPOCHS}/{EPOCHS}" in training
    history = load_report(out)["history"]
    assert sorted(int(row["epoch"]) for row in history) == list(range(EPOCHS))
    phases = [int(row["dsa_phase"]) for row in sorted(history, key=lambda r: r["epoch"])]
    assert phases == sorted(phases) and phases[0] == 0 and phases[-1] == 2, phases


@pytest.mark.keras3_only
def test_run_directory_holds_a_consistent_report(run_dir, keras):
    out = run_dir[0]
    report = load_report(out)
    stripped, unpruned = report["stripped"], report["unpruned"]
    assert stripped["flops_ratio"] <= BUDGET
    assert stripped["flops"] == pytest.approx(stripped["flops_ratio"] * unpruned["flops"])
    assert 0.0 <= stripped["test_accuracy"] <= 1.0
    assert 0.0 <= unpruned["test_accuracy"] <= 1.0  # the reference trained on the schedule
    reference = keras.models.load_model(os.path.join(out, "reference.keras"), compile=False)
    assert dsa_tf.count_flops(reference) == unpruned["flops"]
    assert stripped["strip_max_abs_difference"] < 1e-4
    model = keras.models.load_model(os.path.join(out, "stripped.keras"))
    assert dsa_tf.count_flops(model) == stripped["flops"]
    kept = {row["group"]: row["kept"] for row in report["allocation"]}
    assert len(kept) == len(dsa_tf.analyze(model).prunable)
    for label in ("unpruned", "stripped"):
        for kind in ("float32", "int8"):
            tflite = report[label]["tflite"][kind]
            assert os.path.getsize(tflite["path"]) == tflite["size_bytes"]
            check = tflite["verification"]
            assert check["samples"] > 0 and max(check["errors"].values()) <= check["tolerance"]
            assert tflite["latency"]["median_ms"] > 0
    assert set(report["timings_s"]) >= {"data", "training", "export", "latency"}
    status = report["budget_status"]
    assert status["met"] and status["frozen_by"] in ("allocation", "completion")
    assert status["hard"]["flops"] == pytest.approx(stripped["flops_ratio"])
    assert status["epoch"] == 1 + min(int(row["epoch"]) for row in report["history"]
                                      if row["dsa_phase"] == 2)
    for figure in ("allocation.png", "allocation_trace.png"):
        with open(os.path.join(out, figure), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    # Killed during the allocation and resumed: every ADMM iteration recorded once.
    iterations = [int(row["iteration"]) for row in report["keep_ratio_trace"]]
    assert iterations == list(range(1, report["admm_iterations"] + 1))
    last = report["keep_ratio_trace"][-1]
    assert [last[row["group"]] for row in report["allocation"]] == pytest.approx(
        [row["keep_ratio"] for row in report["allocation"]], abs=1e-6)
    with open(os.path.join(out, "config.json")) as file:
        assert json.load(file)["budget"] == BUDGET


@pytest.mark.keras3_only
def test_report_command_and_a_changed_setting(run_dir):
    out, data_dir = run_dir[:2]
    shown = subprocess.run(dsa_tf_command("report", out), capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    flops = load_report(out)["stripped"]["flops"]
    assert f"{flops:,}" in shown.stdout and "test accuracy" in shown.stdout
    assert "budget met by the allocation" in shown.stdout or "budget NOT met" in shown.stdout
    changed = subprocess.run(
        dsa_tf_command("prune", *ARGS, "--budget=0.5", f"--data_dir={data_dir}", f"--out={out}"),
        capture_output=True, text=True, timeout=120)
    assert changed.returncode != 0 and "other settings (budget)" in changed.stderr
    usage = subprocess.run(dsa_tf_command("--help"), capture_output=True, text=True, timeout=120)
    assert "dsa-tf report DIR" in usage.stdout and "--budget" in usage.stdout


def test_presets_and_model_names(keras, tmp_path):
    paper = preset("paper", dataset="cifar10", model="resnet56")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay) == (300, 128, 0.05, 4e-5)
    assert preset("paper", dataset="imagenet2012").lr_boundaries == (50, 80, 110)
    assert preset("quick", init="model.keras").warmup_epochs == 0
    with pytest.raises(ValueError, match="Unknown run settings"):
        preset("quick", budgte=0.5)
    with pytest.raises(ValueError, match="must exceed warmup_epochs"):
        preset("quick", epochs=2, warmup_epochs=2)
    config = preset("quick")
    assert build_model(config, (8, 8, 1), 3, keras).output_shape == (None, 3)
    with pytest.raises(ValueError, match="Unknown model 'resnet7x'"):
        build_model(preset("quick", model="resnet7x"), (8, 8, 1), 3, keras)
    mobilenet = build_model(preset("quick", model="MobileNetV2"), (32, 32, 3), 5, keras)
    assert mobilenet.output_shape == (None, 5)
    assert {layer.get_config()["momentum"] for layer in mobilenet.layers
            if type(layer).__name__ == "BatchNormalization"} == {0.9}
    path = str(tmp_path / "small.keras")
    dsa_tf.models.cifar_resnet(8, 3, (8, 8, 1), keras=keras).save(path)
    with pytest.raises(ValueError, match="takes inputs of shape"):
        build_model(preset("quick", model=path), (16, 16, 1), 3, keras)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_report(str(tmp_path))
    assert isinstance(build_model(config, (8, 8, 1), 3, keras), keras.Model)


def test_the_job_makes_dsa_with_the_defaults_or_the_papers_settings(keras):
    """--dsa_paper gives DSACallback.paper's settings, --allocate_by the planned end; with
    --init (no warm-up) the defaults plan the allocation to end by a tenth of the run."""
    splits = types.SimpleNamespace(alpha=[(np.zeros((1, 8, 8, 1)), np.zeros(1))])

    def callback(**settings):
        return _allocation_callback(preset("quick", **settings), splits, keras, True, 0)

    assert (callback().keep_signal, callback().allocate_by) == ("differences", 1 / 3)
    assert callback(init="model.keras").allocate_by == 0.1
    paper = callback(dsa_paper=True, allocate_by=0.2)
    assert (paper.keep_signal, paper.weight_masks, paper.allocate_by) == (
        "straight_through", "sampled", 0.2)
    with pytest.raises(ValueError, match="allocate_by must be in"):
        preset("quick", allocate_by=1.5)


def test_summary_table_reports_a_failed_export():
    export = {"size_bytes": 2048, "latency": {"median_ms": 1.5}}
    report = {"config": {"model": "m", "dataset": "d", "budget": 0.5, "resource": "flops"},
              "unpruned": {"flops": 100, "params": 10,
                           "tflite": {"float32": export, "int8": {"error": "int8 mismatch"}}},
              "stripped": {"flops": 50, "params": 5, "test_accuracy": 0.5,
                           "tflite": {"float32": export, "int8": export}}}
    lines = summary_table(report).splitlines()
    int8_size = next(line for line in lines if line.startswith("TFLite int8 KiB"))
    assert int8_size.split()[3:5] == ["n/a", "2.0"]
    assert "  unpruned int8: int8 mismatch" in lines


def test_a_baseline_allocation_runs_on_dsa_schedule(tmp_path):
    """--allocation: the baseline prunes after DSA's warm-up; the report says who allocated.
    (Taylor: the baseline that needs the run's data and loss.)"""
    allocation = "taylor"
    data_dir = tagged_images.prepare(str(tmp_path / "tfds"))
    config = preset("quick", model="resnet8", dataset="tagged_images", budget=0.5,
                    batch_size=16, epochs=3, train_examples=0, int8=False, latency_runs=1,
                    allocation=allocation, data_dir=data_dir, out=str(tmp_path / "run"))
    report = run_pruning(config, verbose=0)
    assert report["stripped"]["flops_ratio"] <= 0.5
    assert report["budget_status"]["frozen_by"] == "assignment"
    table = summary_table(load_report(config.out))
    assert f"allocation {allocation}" in table and "budget met by the given allocation" in table
    with pytest.raises(ValueError, match="allocation must be one of"):
        preset("quick", allocation="random")
