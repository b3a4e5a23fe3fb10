"""COCO-format annotations -> the same versioned WebDataset shards and manifest as a WIDER split.

    isrn shards build --coco annotations/coco_wholebody_train_v1.0.json --images /data/coco/train2017 \\
        --split train --boxes face --out s3://isrn-shards/coco-face

The images stream from COCO's own folder into the shards (no WIDER-format copy on disk) through
`shard_writer.publish_split`, with its guarantees: sha256 and size per shard, the manifest published
last, a rebuild of the same data resuming, a rebuild of other data (another annotation file, or the
other box kind of the same one) writing a new version beside the published one. Records are the
WIDER path's (`shard_writer.sample_record`), plus the COCO `image_id`; which boxes, and how `iscrowd`
and `face_valid` map, is `data_shards.coco`.

The val split also carries the evaluator's ground truth, the WIDER `.mat` files, written by
`isrn_model.wider_eval.save_ground_truth` from the same annotations: every box of every kept image, with
crowd, invalid and degenerate boxes in no setting's keep list (ignored by the official protocol) and
Easy/Medium/Hard by box height (`coco.face_settings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

from data_shards.coco import BOX_KINDS, CocoFormatError, CocoImage, ground_truth_arrays, read_coco
from data_shards.manifest import Manifest
from data_shards.shard_writer import SourceImage, check_shard_size, publish_split
from data_shards.storage import S3Settings, sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
RECORDS_VERSION = "coco-records/1"
"""Part of every COCO build's fingerprint: change it when the mapping from COCO to records changes, so
that a rebuild writes a new version instead of resuming into the old one."""


def build_coco_split(
    annotations: str | Path,
    images_dir: str | Path,
    split: str,
    out_url: str,
    *,
    boxes: str = "face",
    shard_size_mb: float = 64.0,
    settings: S3Settings | None = None,
    progress: bool = True,
) -> Manifest:
    """Shard the images of a COCO annotation file that carry `boxes` boxes into `<out_url>/<split>/`.

    `images_dir` holds the files `images[].file_name` names (COCO 2017: `train2017/`, `val2017/`).
    Raises CocoFormatError (annotation file), FileNotFoundError, or ImageError (an image file).
    """
    check_shard_size(shard_size_mb)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} for COCO annotations, got {split!r}")
    if boxes not in BOX_KINDS:
        raise ValueError(f"boxes must be one of {BOX_KINDS}, got {boxes!r}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"COCO images folder not found: {images_dir}")
    coco = read_coco(annotations, boxes=boxes)
    if not coco.images:
        hint = "; --boxes face needs COCO-WholeBody's face_box" if boxes == "face" else ""
        raise CocoFormatError(coco.path, f"no image has a {boxes} box: nothing to shard{hint}")
    log.info("%s: %s", coco.path.name, ", ".join(f"{k} {v}" for k, v in sorted(coco.counts.items())))
    sizes = image_sizes(coco.path, images_dir, coco.images)
    annotation_sha = sha256_file(coco.path)
    sources = [source_image(coco.path, images_dir, image) for image in coco.images]
    with tempfile.TemporaryDirectory(prefix="isrn-coco-gt-") as tmp:
        truth = write_ground_truth(coco.images, Path(tmp)) if split == "val" else {}
        return publish_split(
            sources, sizes, split, out_url, annotation_file=coco.path.name, annotation_sha256=annotation_sha,
            fingerprint=fingerprint(annotation_sha, boxes), ground_truth=truth, boxes=boxes,
            shard_size_mb=shard_size_mb, settings=settings, progress=progress)


def fingerprint(annotation_sha: str, boxes: str) -> str:
    """What determines a COCO build's records besides the image files: the file, the box kind, the mapping."""
    return hashlib.sha256(json.dumps([annotation_sha, boxes, RECORDS_VERSION]).encode()).hexdigest()


def source_image(annotations: Path, images_dir: Path, image: CocoImage) -> SourceImage:
    return SourceImage(image.record, images_dir / image.file_name, image.file_name,
                       f"{annotations.name}: image id {image.image_id}", (image.width, image.height),
                       {"image_id": image.image_id})


def image_sizes(annotations: Path, images_dir: Path, images: tuple[CocoImage, ...]) -> list[int]:
    """File sizes of the images; CocoFormatError naming the first missing one (and how many are)."""
    sizes, missing = [], []
    for image in images:
        try:
            sizes.append((images_dir / image.file_name).stat().st_size)
        except FileNotFoundError:
            missing.append(image)
    if missing:
        more = f" (and {len(missing) - 1} more listed images)" if len(missing) > 1 else ""
        raise CocoFormatError(annotations, f"image id {missing[0].image_id}: {missing[0].file_name} is not in "
                                           f"{images_dir}{more}: give --images the folder holding the split's images "
                                           "(COCO 2017: train2017/ or val2017/), restore the files, or remove their "
                                           "entries from `images`")
    return sizes


def write_ground_truth(images: tuple[CocoImage, ...], folder: Path) -> dict[str, Path]:
    """The evaluator's val `.mat` files of `images` in `folder` (byte-identical for the same images)."""
    from isrn_model.wider_eval import ground_truth_from_arrays, save_ground_truth

    # The same ground truth gives the same bytes: a rebuild of the same data leaves the published files as
    # they are (another time in scipy's .mat header would replace the published version's ground truth).
    save_ground_truth(ground_truth_from_arrays(**ground_truth_arrays(images)), folder, split="val")
    return {path.name: path for path in sorted(folder.glob("*.mat"))}
