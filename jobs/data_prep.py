"""Data preparation: generate a spec's WIDER-format data set and build its shards, when the spec asks.

    isrn data prepare demo          # on its own (what `make demo` runs first)
    prepare_data(spec, env)         # what `isrn train` / `isrn tune` run when spec.data.synth is set

Only a spec with a `data.synth` section generates anything: a spec naming real shards never
writes to them. The generator is seeded (the same seed gives byte-identical images), so a second
run finds the manifests and does nothing, and a deleted local copy is generated again identically.

What was generated is checked, not assumed: a data set records its fingerprint
(`data_shards.synth.dataset_fingerprint`: counts, seed, generator settings and the generator's code)
and so does every manifest built from it (`Manifest.source`). A spec whose `data.synth` changed, or
a newer generator, finds the fingerprints differ and generates and shards its data again, rather than
training on the old set under the same names. The shard size of an existing build is not part of it.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

from jobs.environment import JobEnvironment
from jobs.errors import ConfigError
from jobs.spec import JobSpec, SynthDataConfig

log = logging.getLogger(__name__)


def synth_fingerprint(synth: SynthDataConfig) -> str:
    """The fingerprint of the data set `synth` describes (what its folder and shards record)."""
    from data_shards.synth import dataset_fingerprint

    return dataset_fingerprint(train=synth.train_images, val=synth.val_images, seed=synth.seed, config=synth.generator)


def prepare_data(spec: JobSpec, env: JobEnvironment) -> list[str]:
    """Generate the data set and build the shards of the splits whose manifests are missing or were
    built from other data; returns those splits. ConfigError for a spec without `data.synth`."""
    from data_shards.shard_writer import build_split
    from jobs.preflight import SPLITS, read_split_manifest

    synth = spec.data.synth
    if synth is None:
        raise ConfigError(f"spec {spec.name!r}: data.synth is not set, so there is no data to generate; "
                          f"build its shards with `isrn shards build … --out {spec.data.shards}`")
    fingerprint = synth_fingerprint(synth)
    stale = []
    for split in SPLITS:
        manifest = read_split_manifest(spec, split, env)
        if manifest is None or manifest.source != fingerprint:
            stale.append(split)
            if manifest is not None:
                log.info("%s shards in %s were built from %s, not from this spec's data.synth (%s): building them "
                         "again", split, spec.data.shards, manifest.source or "other data", fingerprint)
    if stale:
        root = generate_synth(synth)
        for split in stale:
            log.info("building %s shards in %s", split, spec.data.shards)
            build_split(root, split, spec.data.shards, shard_size_mb=synth.shard_size_mb, settings=env.s3,
                        progress=False, source=fingerprint)
    return stale


def generate_synth(synth: SynthDataConfig) -> Path:
    """The spec's generated WIDER-format data set, generated (seeded: always the same images) unless
    the folder already holds it; returns its root, relative paths taken from the current folder.

    The new set is generated beside the folder and renamed into place once complete. A set generated
    from other settings or by another generator is then deleted; a folder without a fingerprint (a set
    from an isrn before fingerprints, one cut short, or anything else) is kept, renamed to
    `<root>.before-<time>`, since this code cannot tell what it holds.
    """
    from data_shards.synth import generate_dataset, generated_fingerprint

    root = synth.root.expanduser().absolute()
    fingerprint = synth_fingerprint(synth)
    found = generated_fingerprint(root)
    if found == fingerprint:
        return root
    log.info("generating a WIDER-format data set in %s (%d train, %d val images)%s", root, synth.train_images,
             synth.val_images, f"; it replaces the set generated from {found}" if found else "")
    root.parent.mkdir(parents=True, exist_ok=True)
    # Made with the user's umask (tempfile.mkdtemp's would be private, 0700): it becomes the data set.
    partial = root.with_name(f".{root.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    try:
        generate_dataset(partial, train=synth.train_images, val=synth.val_images, seed=synth.seed,
                         config=synth.generator)
        _replace(root, partial, keep_old=found is None)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already unless generation failed
    return root


def _replace(root: Path, new: Path, *, keep_old: bool) -> None:
    """Rename `new` to `root`; what `root` held is deleted, or kept beside it when `keep_old` and not empty."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        new.rename(root)
        return
    # The old folder is renamed aside before the new one takes its name, and deleted only after.
    aside = root.with_name(f"{root.name}.before-{time.strftime('%Y%m%d-%H%M%S')}" if keep_old
                           else f".{root.name}.old-{uuid.uuid4().hex[:8]}")
    root.rename(aside)
    new.rename(root)
    if keep_old:
        log.warning("%s held files without a generated set's fingerprint: kept them as %s (delete it when "
                    "not needed)", root, aside)
    else:
        shutil.rmtree(aside)
