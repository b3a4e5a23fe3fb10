"""WIDER FACE split -> WebDataset tar shards in a folder or S3, with the manifest written last.

    isrn shards build --wider-root /data/WIDER --split train --out s3://isrn-data/wider --shard-size-mb 64

`build_split` reads the WIDER layout; `data_shards.coco_shards` feeds COCO-format annotations to the
same `publish_split`, so both give the same shards, manifest and guarantees.

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


def sample_record(record: ImageRecord, split: str, width: int, height: int, *, source: str | None = None) -> dict:
    """The JSON stored beside each JPEG; `source` is the image's path in its data set (default: the
    WIDER layout's `WIDER_<split>/images/<event>/<name>.jpg`)."""
    return {
        "key": sample_key(record),
        "event": record.event,
        "name": record.name,
        "split": split,
        "source": source or f"WIDER_{split}/images/{record.path}",
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
class SourceImage:
    """One image to shard, from any annotation format: its record, its file and how errors name it."""

    record: ImageRecord
    """Key (`<event>/<name>`) and faces, as the sample's JSON stores them."""
    path: Path
    """The image file, stored byte for byte."""
    source: str
    """The image's path in its data set, stored as the record's `source`."""
    where: str
    """Where the annotation names the image, for errors: `wider_face_train_bbx_gt.txt:11`, `x.json: image id 7`."""
    declared_size: tuple[int, int] | None = None
    """(width, height) the annotation states its boxes in (COCO's `images`); the file must have that size."""
    extra: dict = dataclasses.field(default_factory=dict)
    """More fields of the stored JSON (COCO's `image_id`)."""


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
    """Write one tar shard of the WIDER layout's `records` at `path`."""
    return write_samples(path, split, wider_images(layout, split, records))


def wider_images(layout: WiderLayout, split: str, records: list[ImageRecord]) -> list[SourceImage]:
    """The images of WIDER records, named in errors by annotation file and line."""
    annotation = layout.annotation_file(split).name
    return [SourceImage(rec, layout.image_path(split, rec), f"WIDER_{split}/images/{rec.path}",
                        f"{annotation}:{rec.line}") for rec in records]


def write_samples(path: Path, split: str, images: list[SourceImage]) -> ShardEntry:
    """Write one tar shard of `images` at `path`; ImageError naming the file when one cannot be used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    faces = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for image in images:
            rec = image.record
            jpeg = image.path.read_bytes()
            width, height = checked_size(jpeg, f"{image.path} ({image.where})")
            if image.declared_size not in (None, (width, height)):
                raise ImageError(
                    f"{image.path} ({image.where}): the file is {width} × {height} pixels but the annotation says "
                    f"{image.declared_size[0]} × {image.declared_size[1]}, the size its boxes are in: restore the "
                    "original image, or fix its width and height in the annotation file, and run the same command "
                    "again")
            record = {**sample_record(rec, split, width, height, source=image.source), **image.extra}
            key = sample_key(rec)
            _add_member(tar, f"{key}.jpg", jpeg)
            _add_member(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode())
            faces += len(rec.faces)
    return ShardEntry(path.name, len(images), faces, path.stat().st_size, sha256_file(path))


def build_split(
    wider_root: str | Path,
    split: str,
    out_url: str,
    *,
    shard_size_mb: float = 64.0,
    settings: S3Settings | None = None,
    progress: bool = True,
    source: str = "",
) -> Manifest:
    """Shard one split of the WIDER layout at `wider_root` into `<out_url>/<split>/`; returns its manifest.

    `source`: the generated set's fingerprint (`Manifest.source`), empty for any other folder."""
    check_shard_size(shard_size_mb)
    layout = WiderLayout(wider_root)
    records = layout.records(split)
    annotation = layout.annotation_file(split)
    if not records:
        raise WiderFormatError(annotation, 1, "no image records: nothing to shard")
    sizes = image_sizes(layout, split, records)
    annotation_sha = sha256_file(annotation)
    return publish_split(
        wider_images(layout, split, records), sizes, split, out_url,
        annotation_file=annotation.relative_to(layout.root).as_posix(), annotation_sha256=annotation_sha,
        # A generated set's images can change under the same annotation (a generator that draws
        # differently): its fingerprint names the version too, so new shards never overwrite old ones.
        fingerprint=f"{annotation_sha}:{source}" if source else annotation_sha,
        ground_truth=layout.ground_truth_files() if split == "val" else {},
        shard_size_mb=shard_size_mb, settings=settings, progress=progress, source=source)


def check_shard_size(shard_size_mb: float) -> None:
    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}")


def publish_split(
    images: list[SourceImage],
    sizes: list[int],
    split: str,
    out_url: str,
    *,
    annotation_file: str,
    annotation_sha256: str,
    fingerprint: str,
    ground_truth: dict[str, Path],
    boxes: str = "face",
    shard_size_mb: float = 64.0,
    settings: S3Settings | None = None,
    progress: bool = True,
    source: str = "",
) -> Manifest:
    """Write `images` (file sizes `sizes`, in bytes) as `<out_url>/<split>/<version>/` shards, upload the
    `ground_truth` files (name -> local path) beside them, then publish the manifest.

    `fingerprint` is what determines the records besides the image files (the annotation file's sha256,
    and for COCO also which boxes were taken; for a generated set also its `source`): with the plan it
    names the version. `source`: see `Manifest.source`.
    """
    from tqdm import tqdm

    check_access(out_url, settings, write=True)
    store = open_store(out_url, settings)

    plan = plan_shards(sizes, int(shard_size_mb * 1024 * 1024))
    version = build_version(fingerprint, [[images[i].record.path for i in idx] for idx in plan])
    # Versioned names: a rebuild from other data writes beside the published shards, never over them,
    # so readers of the published manifest keep working until the new manifest replaces it. The same
    # data gives the same version, so an interrupted build resumes where it stopped.
    names = [f"{version}/{split}-{i:06d}.tar" for i in range(len(plan))]

    entries: list[ShardEntry] = []
    uploaded = skipped = 0
    with tempfile.TemporaryDirectory(prefix="isrn-shards-") as tmp, tqdm(
        # disable=None: a bar on a terminal, nothing in a log file or a Ray job's output.
        total=len(images), desc=f"shards {split}", unit="img", disable=None if progress else True
    ) as bar:
        for name, idx in zip(names, plan, strict=True):
            local = Path(tmp) / Path(name).name
            entry = dataclasses.replace(write_samples(local, split, [images[i] for i in idx]), name=name)
            if store.stat(f"{split}/{name}") == (entry.bytes, entry.sha256):
                skipped += 1
            else:
                store.put_file(local, f"{split}/{name}", entry.sha256)
                uploaded += 1
            local.unlink()
            entries.append(entry)
            bar.update(len(idx))

    published_truth = {}
    for file_name, path in sorted(ground_truth.items()):
        sha = sha256_file(path)
        name = f"{version}/ground_truth/{file_name}"
        if store.stat(f"{split}/{name}") != (path.stat().st_size, sha):
            store.put_file(path, f"{split}/{name}", sha)
        published_truth[file_name] = {"name": name, "bytes": path.stat().st_size, "sha256": sha}

    manifest = Manifest(
        split=split,
        shards=tuple(entries),
        annotation_file=annotation_file,
        annotation_sha256=annotation_sha256,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ground_truth=published_truth,
        boxes=boxes,
        source=source,
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


def build_version(fingerprint: str, shard_members: list[list[str]]) -> str:
    """`v-<12 hex>`: a function of the annotation (`fingerprint`) and of which images go to which shard."""
    digest = hashlib.sha256(json.dumps([fingerprint, shard_members]).encode()).hexdigest()
    return f"v-{digest[:12]}"
