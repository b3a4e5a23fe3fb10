"""Streaming loaders on local shards: equal batch counts per rank, each val image once, skips."""

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from data_shards.loader import AugmentConfig, LoaderConfig, assign_shards, make_train_loader, make_val_loader
from data_shards.manifest import Manifest, ShardEntry
from data_shards.shard_writer import sample_key, write_shard
from data_shards.images import MEAN_BGR
from data_shards.wider_layout import WiderLayout

CFG = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=128), num_workers=2, shuffle_buffer=4, val_batch_size=2,
                   val_max_size=256)


def uneven_shards(wider_root: Path, out: Path, split: str, sizes: list[int]) -> str:
    """Shards holding `sizes` consecutive images each; returns the manifest path."""
    layout = WiderLayout(wider_root)
    records = layout.records(split)
    assert sum(sizes) <= len(records)
    entries, start = [], 0
    for i, n in enumerate(sizes):
        entries.append(write_shard(out / f"{split}-{i:06d}.tar", layout, split, records[start : start + n]))
        start += n
    manifest = Manifest(split=split, shards=tuple(entries), annotation_file="x", annotation_sha256="0")
    (out / "manifest.json").write_text(manifest.to_json())
    return str(out / "manifest.json")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="LoaderConfig.batch_size"):
        LoaderConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"LoaderConfig\.augment\.data_anchor_sampling_prob: Input should be less than or equal to 1"):
        LoaderConfig.from_dict({"augment": {"data_anchor_sampling_prob": 1.5}})
    with pytest.raises(ValueError, match="LoaderConfig.bogus: unknown key"):
        LoaderConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="LoaderConfig.image_size: unknown key"):  # now augment.out_size
        LoaderConfig(image_size=640)


def test_train_batches_equal_per_rank_with_uneven_shards(wider_root, tmp_path):
    url = uneven_shards(wider_root, tmp_path, "train", [1, 9, 2])  # 12 images in shards of 1, 9, 2
    counts = []
    for rank in range(2):
        loader = make_train_loader(url, CFG, rank=rank, world_size=2)
        assert len(loader) == 12 // (2 * 2)  # 3
        for _epoch in range(2 - rank):  # rank 0 twice: the second epoch restarts the workers
            batches = list(loader)
            counts.append(len(batches))
        batch = batches[0]
        assert batch["images"].shape == (2, 3, 128, 128) and batch["images"].dtype == torch.uint8  # the model converts
        for target in batch["targets"]:
            boxes = target["boxes"]
            assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
            assert bool((boxes >= 0).all() and (boxes <= 128).all() and (boxes[:, 2:] > boxes[:, :2]).all())
    assert counts == [3, 3, 3]


def test_val_visits_every_image_once_with_equal_batches(wider_root, tmp_path):
    url = uneven_shards(wider_root, tmp_path, "val", [5, 1, 2])  # 8 images
    expected = {(r.event, r.name) for r in WiderLayout(wider_root).records("val")}
    seen, lengths = [], []
    for rank in range(2):
        loader = make_val_loader(url, CFG, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.append(len(batches))
        for b in batches:
            assert b["images"].shape[2] % 128 == 0 and b["images"].shape[3] % 128 == 0
            seen += [k for k, v in zip(b["keys"], b["valid"].tolist(), strict=True) if v]
            for i, (size, scale, valid) in enumerate(zip(b["image_sizes"].tolist(), b["scales"].tolist(),
                                                         b["valid"].tolist(), strict=True)):
                if valid:
                    assert scale == min(1.0, 256 / max(size))
                    # padded with training's fill colour (RGB here), as a served canvas is, not black
                    h, w = round(size[0] * scale), round(size[1] * scale)
                    fill = torch.tensor(MEAN_BGR[::-1], dtype=b["images"].dtype)[:, None, None]
                    assert (b["images"][i, :, h:, :] == fill).all() and (b["images"][i, :, :, w:] == fill).all()
                    assert h < b["images"].shape[2] or w < b["images"].shape[3]  # some padding to check
    assert lengths[0] == lengths[1]
    assert sorted(seen) == sorted(expected)  # every val image exactly once across ranks


def test_assign_shards_balances_samples():
    assert assign_shards([5, 1, 2], 2) == [[0], [1, 2]]
    assert assign_shards([1], 3) == [[0], [], []]


def _corrupt_shards(wider_root: Path, out: Path) -> str:
    layout = WiderLayout(wider_root)
    records = layout.records("val")
    good = write_shard(out / "val-000000.tar", layout, "val", records[:4])
    # shard 1: a corrupt JPEG, an undecodable JSON, then two good samples
    bad = out / "val-000001.tar"
    with tarfile.open(bad, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for i, rec in enumerate(records[4:8]):
            jpeg = layout.image_path("val", rec).read_bytes()
            meta = json.dumps({"event": rec.event, "name": rec.name, "width": 1, "height": 1, "faces": []}).encode()
            if i == 0:
                jpeg = b"\xff\xd8 not a jpeg"
            if i == 1:
                meta = b"{not json"
            add(f"{sample_key(rec)}.jpg", jpeg)
            add(f"{sample_key(rec)}.json", meta)
    # shard 2: a copy of shard 0 cut in the middle of a member (a truncated tar)
    data = (out / "val-000000.tar").read_bytes()
    (out / "val-000002.tar").write_bytes(data[: len(data) // 2 + 100])
    # (Sizes as stored: a shard of another size is refused before reading, see below; these are
    # corrupt inside, as bit rot or a bad writer leaves them, and are skipped sample by sample.)
    truncated = (out / "val-000002.tar").stat().st_size
    entries = (good, ShardEntry(bad.name, 4, 0, bad.stat().st_size, "x"), ShardEntry("val-000002.tar", 4, 0, truncated, "x"))
    (out / "manifest.json").write_text(Manifest("val", entries, "x", "0").to_json())
    return str(out / "manifest.json")


def test_corrupt_samples_are_skipped_and_counted(wider_root, tmp_path, caplog):
    url = _corrupt_shards(wider_root, tmp_path)
    cfg = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=64), num_workers=0, val_batch_size=1)
    batches = list(make_val_loader(url, cfg))
    valid = [k for b in batches for k, v in zip(b["keys"], b["valid"].tolist(), strict=True) if v]
    skipped = sum(b["skipped"] for b in batches)
    # 4 good + 2 good of shard 1 + the whole samples of the truncated copy before the cut
    assert len(set(valid[:4])) == 4 and len(valid) >= 6
    assert skipped >= 3  # corrupt JPEG, bad JSON, truncated tar
    assert "corrupt JPEG" in caplog.text and "val-000001.tar" in caplog.text
    assert "undecodable JSON" in caplog.text
    train = list(make_train_loader(url, LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=64), num_workers=0,
                                                      batches_per_epoch=8)))
    assert len(train) == 8  # the epoch goes on through bad samples


def test_shards_that_differ_from_the_manifest_are_refused_before_reading(wider_root, tmp_path):
    from data_shards.manifest import ShardMismatchError

    url = _corrupt_shards(wider_root, tmp_path)
    cfg = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=64), num_workers=0, val_batch_size=1)
    (tmp_path / "val-000001.tar").write_bytes(b"x" * 10)  # replaced after publication
    with pytest.raises(ShardMismatchError, match=r"val-000001.tar: 10 bytes, the manifest says \d+.*isrn shards build"):
        make_val_loader(url, cfg)
    (tmp_path / "val-000001.tar").unlink()
    with pytest.raises(ShardMismatchError, match=r"val-000001.tar: missing"):
        make_train_loader(url, cfg)
    # With verify, the content too: the manifest's sha256 "x" of shard 1 is wrong whatever its size.
    url = _corrupt_shards(wider_root, tmp_path / "again")
    with pytest.raises(ShardMismatchError, match=r"val-000001.tar: \d+ bytes sha256"):
        make_val_loader(url, dataclasses.replace(cfg, verify=True))
