"""Shared fixtures. The suite runs under Keras 3 and, with TF_USE_LEGACY_KERAS=1, tf_keras."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from dsa_tf import _keras  # noqa: E402


@pytest.fixture
def keras():
    """The Keras that tf.keras resolves to in this run."""
    module = _keras.default_keras()
    module.backend.clear_session()
    return module
