"""``python -m dsa_tf``: the same as the ``dsa-tf`` command."""

from dsa_tf.run.cli import run

if __name__ == "__main__":
    run()
