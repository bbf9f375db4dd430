"""A tiny tfds dataset prepared in a temporary folder, for the data and CLI tests.

``tagged_images`` is not registered with tfds: only a data_dir holding it can find it. Its
8x8x1 images are filled with their example's number, so an example can be recognised after
the pipeline: train examples 0-199, validation examples 200-219; label = number % 3.
"""

import numpy as np
import tensorflow_datasets as tfds

N_TRAIN, N_VALIDATION = 200, 20

with tfds.core.registered.skip_registration():
    class TaggedImages(tfds.core.GeneratorBasedBuilder):
        """Images filled with their example's number; label = number % 3."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager: object) -> dict:
            return {"train": self._generate_examples(0, N_TRAIN),
                    "validation": self._generate_examples(N_TRAIN, N_VALIDATION)}

        def _generate_examples(self, start: int, count: int):
            for tag in range(start, start + count):
                image = np.full((8, 8, 1), tag, np.uint8)
                yield tag, {"image": image, "label": tag % 3}


def prepare(folder: str) -> str:
    """Writes tagged_images into the tfds data_dir ``folder`` and returns the folder."""
    TaggedImages(data_dir=folder).download_and_prepare()
    return folder
