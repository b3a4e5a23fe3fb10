"""WIDER FACE split -> WebDataset tar shards in a folder or S3, with the manifest written last.

    isrn shards build --wider-root /data/WIDER --split train --out s3://isrn-data/wider --shard-size-mb 64

Each sample is two tar members under the key `<event>/<image name>`:
    `.jpg`   the original JPEG bytes, never re-encoded
    `.json`  `sample_record`: event, name, source path, width, height, and every face of the
             annotation file (x, y, w, h in pixels and the six attributes, degenerate ones included)

Shards are cut in annotation order once their size passes the target, so the plan (which image
goes in which shard) is a function of the annotation file and the image sizes only. Tars are
written reproducibly (fixed mtime, owner and mode), so a re-run rebuilds byte-identical shards
and skips every shard already in the store with the same size and sha256: an interrupted run
resumes where it stopped. The manifest is published only after every shard is in place; a
rebuild from a changed annotation file first withdraws the old manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_shards.images import ImageError, decode_bgr, declared_size
from data_shards.manifest import MANIFEST_NAME, Manifest, ShardEntry
from data_shards.storage import S3Settings, check_access, open_store, sha256_file
from data_shards.wider_layout import ImageRecord, WiderFormatError, WiderLayout

log = logging.getLogger(__name__)

_TAR_OVERHEAD = 3 * 512  # two member headers plus padding, roughly, per sample


def sample_key(record: ImageRecord) -> str:
    """WebDataset key of an image: `<event>/<name>` (no dots, so the extension split is clean)."""
    return f"{record.event}/{record.name}"


def sample_record(record: ImageRecord, split: str, width: int, height: int) -> dict:
    """The JSON stored beside each JPEG."""
    return {
        "key": sample_key(record),
        "event": record.event,
        "name": record.name,
        "split": split,
        "source": f"WIDER_{split}/images/{record.path}",
        "width": width,
        "height": height,
        "faces": [
            {"x": f.x, "y": f.y, "w": f.w, "h": f.h, **f.attributes()} for f in record.faces
        ],
    }


def checked_size(data: bytes, source: str) -> tuple[int, int]:
    """(width, height) in stored pixels of an image the loader will decode; ImageError naming `source`.

    The whole file is decoded once at 1/8 scale (about 1 ms for 1024 px): an image the loader would
    skip on every epoch (empty, truncated, over the pixel limit) is refused before it is published.
    """
    try:
        size = declared_size(data)
        decode_bgr(data, reduced=True)
    except ImageError as error:
        raise ImageError(f"{source}: {error}; replace the image, or remove its record from the annotation "
                         "file, and run the same command again") from None
    return size


@dataclass(frozen=True)
class BuiltShard:
    path: Path
    entry: ShardEntry


def plan_shards(sizes: list[int], target_bytes: int) -> list[range]:
    """Consecutive index ranges whose summed sizes just pass `target_bytes` (the last may be smaller)."""
    plan, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        total += size + _TAR_OVERHEAD
        if total >= target_bytes:
            plan.append(range(start, i + 1))
            start, total = i + 1, 0
    if start < len(sizes):
        plan.append(range(start, len(sizes)))
    return plan


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible tars: identical input -> identical bytes -> resumable by sha256
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, layout: WiderLayout, split: str, records: list[ImageRecord]) -> ShardEntry:
    """Write one tar shard of `records` at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    faces = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rec in records:
            image_path = layout.image_path(split, rec)
            jpeg = image_path.read_bytes()
            width, height = checked_size(jpeg, f"{image_path} ({layout.annotation_file(split).name}:{rec.line})")
            meta = json.dumps(sample_record(rec, split, width, height), sort_keys=True).encode()
            key = sample_key(rec)
            _add_member(tar, f"{key}.jpg", jpeg)
            _add_member(tar, f"{key}.json", meta)
            faces += len(rec.faces)
    return ShardEntry(path.name, len(records), faces, path.stat().st_size, sha256_file(path))


def build_split(
    wider_root: str | Path,
    split: str,
    out_url: str,
    *,
    shard_size_mb: float = 64.0,
    settings: S3Settings | None = None,
    progress: bool = True,
) -> Manifest:
    """Shard one split of the WIDER layout at `wider_root` into `<out_url>/<split>/`; returns its manifest."""
    from tqdm import tqdm

    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}")
    layout = WiderLayout(wider_root)
    records = layout.records(split)
    annotation = layout.annotation_file(split)
    if not records:
        raise WiderFormatError(annotation, 1, "no image records: nothing to shard")
    sizes = image_sizes(layout, split, records)
    annotation_sha = sha256_file(annotation)
    check_access(out_url, settings, write=True)
    store = open_store(out_url, settings)

    plan = plan_shards(sizes, int(shard_size_mb * 1024 * 1024))
    version = build_version(annotation_sha, [[records[i].path for i in idx] for idx in plan])
    # Versioned names: a rebuild from other data writes beside the published shards, never over them,
    # so readers of the published manifest keep working until the new manifest replaces it. The same
    # data gives the same version, so an interrupted build resumes where it stopped.
    names = [f"{version}/{split}-{i:06d}.tar" for i in range(len(plan))]

    entries: list[ShardEntry] = []
    uploaded = skipped = 0
    with tempfile.TemporaryDirectory(prefix="isrn-shards-") as tmp, tqdm(
        # disable=None: a bar on a terminal, nothing in a log file or a Ray job's output.
        total=len(records), desc=f"shards {split}", unit="img", disable=None if progress else True
    ) as bar:
        for name, idx in zip(names, plan, strict=True):
            local = Path(tmp) / Path(name).name
            entry = dataclasses.replace(write_shard(local, layout, split, [records[i] for i in idx]), name=name)
            if store.stat(f"{split}/{name}") == (entry.bytes, entry.sha256):
                skipped += 1
            else:
                store.put_file(local, f"{split}/{name}", entry.sha256)
                uploaded += 1
            local.unlink()
            entries.append(entry)
            bar.update(len(idx))

    ground_truth = {}
    if split == "val":
        for file_name, path in sorted(layout.ground_truth_files().items()):
            sha = sha256_file(path)
            name = f"{version}/ground_truth/{file_name}"
            if store.stat(f"{split}/{name}") != (path.stat().st_size, sha):
                store.put_file(path, f"{split}/{name}", sha)
            ground_truth[file_name] = {"name": name, "bytes": path.stat().st_size, "sha256": sha}

    manifest = Manifest(
        split=split,
        shards=tuple(entries),
        annotation_file=annotation.relative_to(layout.root).as_posix(),
        annotation_sha256=annotation_sha,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ground_truth=ground_truth,
    )
    # Last: the split becomes visible only now. A PUT is atomic on S3; locally a rename is.
    store.put_bytes(manifest.to_json().encode(), f"{split}/{MANIFEST_NAME}")
    log.info("split %s: %d shards (%d uploaded, %d already present), %d images, %d faces, %.1f MB",
             split, len(entries), uploaded, skipped, manifest.samples, manifest.faces, manifest.bytes / 1e6)
    return manifest


def image_sizes(layout: WiderLayout, split: str, records: list[ImageRecord]) -> list[int]:
    """File sizes of the records' images; WiderFormatError naming the first missing one's record."""
    sizes, missing = [], []
    for record in records:
        try:
            sizes.append(layout.image_path(split, record).stat().st_size)
        except FileNotFoundError:
            missing.append(record)
    if missing:
        more = f" (and {len(missing) - 1} more listed images)" if len(missing) > 1 else ""
        raise WiderFormatError(layout.annotation_file(split), missing[0].line,
                               f"image {missing[0].path} is not in {layout.images_dir(split)}{more}: restore the "
                               "images, or remove their records")
    return sizes


def build_version(annotation_sha: str, shard_members: list[list[str]]) -> str:
    """`v-<12 hex>`: a function of the annotation file and of which images go to which shard."""
    digest = hashlib.sha256(json.dumps([annotation_sha, shard_members]).encode()).hexdigest()
    return f"v-{digest[:12]}"
