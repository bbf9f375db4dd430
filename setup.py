"""Installs dsa_tf: budgeted channel pruning for Keras with DSA."""

from setuptools import find_packages, setup

setup(
    name="dsa_tf",
    version="0.1.0",
    description=(
        "Differentiable Sparsity Allocation: budgeted channel pruning for Keras "
        "that rebuilds genuinely smaller models for TFLite."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dsa_tf", "dsa_tf.*"]),
    install_requires=[
        "tensorflow~=2.21.0",
        "tf-keras~=2.21.0",
        "tensorflow-model-optimization~=0.8.1",
        "tensorflow-datasets~=4.9.10",
        "importlib_resources>=6",
        "absl-py>=1.4",
        "ai-edge-litert>=2.0",
        "matplotlib>=3.7",
    ],
    entry_points={"console_scripts": ["dsa-tf=dsa_tf.run.cli:run"]},
    # keras-hub: its image backbones are tested (tests/test_keras_hub.py), not used at runtime
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "keras-hub>=0.32"]},
)
