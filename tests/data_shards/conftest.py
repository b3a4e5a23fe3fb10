"""Small generated WIDER-format data sets shared by the data-layer tests."""

from pathlib import Path

import pytest

from data_shards.synth import generate_dataset


@pytest.fixture(scope="session")
def wider_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated data set: 12 train, 8 val, 2 test images (seed 5)."""
    root = tmp_path_factory.mktemp("wider")
    generate_dataset(root, train=12, val=8, test=2, seed=5)
    return root
