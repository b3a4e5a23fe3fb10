"""Shards are published atomically and versioned: a rebuild never touches what a manifest lists."""

from __future__ import annotations

from data_shards.manifest import check_shards, manifest_url, read_manifest, shard_urls
from data_shards.shard_writer import build_split
from data_shards.synth import SynthConfig, generate_dataset


def test_a_rebuild_from_other_data_leaves_the_published_split_readable_until_it_replaces_it(wider_root, tmp_path):
    out = str(tmp_path / "shards")
    first = build_split(wider_root, "train", out, shard_size_mb=0.05, progress=False)
    url = manifest_url(out, "train")
    old_urls = shard_urls(url, first)
    assert all(s.name.startswith("v-") and "/train-" in s.name for s in first.shards)

    # The same data again: the same version, nothing rewritten (an interrupted build resumes).
    again = build_split(wider_root, "train", out, shard_size_mb=0.05, progress=False)
    assert [s.name for s in again.shards] == [s.name for s in first.shards]

    other = tmp_path / "other"
    generate_dataset(other, train=6, val=2, seed=9, config=SynthConfig(image_width=256))
    # A reader holding the old manifest keeps reading its shards while (and after) the rebuild runs.
    rebuilt = build_split(other, "train", out, shard_size_mb=0.05, progress=False)
    assert {s.name.split("/")[0] for s in rebuilt.shards}.isdisjoint({s.name.split("/")[0] for s in first.shards})
    check_shards(url, first)  # every old shard is still there, unchanged
    assert all((tmp_path / "shards" / "train" / s.name).is_file() for s in first.shards) and old_urls
    # New readers get the new split: the manifest was replaced last.
    assert read_manifest(url) == rebuilt and rebuilt.annotation_sha256 != first.annotation_sha256
