"""Data preparation: generate a spec's WIDER-format data set and build its shards, when the spec asks.

    isrn data prepare demo          # on its own (what `make demo` runs first)
    prepare_data(spec, env)         # what `isrn train` / `isrn tune` run when spec.data.synth is set

Only a spec with a `data.synth` section generates anything: a spec naming real shards never
writes to them. The generator is seeded (the same seed gives byte-identical images), so a second
run finds the manifests and does nothing, and a deleted local copy is generated again identically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.environment import JobEnvironment
from jobs.errors import ConfigError
from jobs.spec import JobSpec, SynthDataConfig

log = logging.getLogger(__name__)


def prepare_data(spec: JobSpec, env: JobEnvironment) -> list[str]:
    """Generate the data set and build the shards of the splits whose manifests are missing; returns
    those splits. ConfigError for a spec without `data.synth`."""
    from data_shards.shard_writer import build_split
    from jobs.preflight import SPLITS, read_split_manifest

    synth = spec.data.synth
    if synth is None:
        raise ConfigError(f"spec {spec.name!r}: data.synth is not set, so there is no data to generate; "
                          f"build its shards with `isrn shards build … --out {spec.data.shards}`")
    missing = [split for split in SPLITS if read_split_manifest(spec, split, env) is None]
    if missing:
        root = generate_synth(synth)
        for split in missing:
            log.info("building %s shards in %s", split, spec.data.shards)
            build_split(root, split, spec.data.shards, shard_size_mb=synth.shard_size_mb, settings=env.s3,
                        progress=False)
    return missing


def generate_synth(synth: SynthDataConfig) -> Path:
    """The spec's generated WIDER-format data set, generated (seeded: always the same images) unless
    it is there already; returns its root, relative paths taken from the current folder."""
    from data_shards.synth import generate_dataset

    root = synth.root.expanduser().absolute()
    if not (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file():
        log.info("generating a WIDER-format data set in %s (%d train, %d val images)", root,
                 synth.train_images, synth.val_images)
        generate_dataset(root, train=synth.train_images, val=synth.val_images, seed=synth.seed,
                         config=synth.generator)
    return root
