"""Resetting Keras' global state between the models of the tests."""

from types import ModuleType


def reset(keras: ModuleType) -> None:
    """Resets ``keras``' global state (layer names, the default graph), without Keras 3's
    full garbage collection: one per test took a sixth of the suite's time (tests/
    test_callback.py and test_strip.py: 3:17 with it, 2:37 without), and Python collects
    the same garbage on its own."""
    if keras.__name__.startswith("tf_keras"):
        keras.backend.clear_session()
    else:
        keras.backend.clear_session(free_memory=False)
