"""`isrn shards build|inspect`: WebDataset shards of WIDER FACE (or COCO-format data) in a folder or S3.

    isrn shards build --wider-root /tmp/wider-synth --split train --out s3://isrn-data/wider
    isrn shards build --coco coco_wholebody_val_v1.0.json --images /data/coco/val2017 --split val \
        --boxes face --out s3://isrn-data/coco-face
    isrn shards inspect s3://isrn-data/wider --verify
    isrn shards inspect s3://isrn-data/wider --json

S3 endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import json

import click


@click.group()
def shards() -> None:
    """Build and inspect WebDataset shards of WIDER FACE or COCO-format data."""


@shards.command()
@click.option("--wider-root", type=click.Path(exists=True, file_okay=False), help="Root of the WIDER FACE layout.")
@click.option("--coco", "coco_annotations", type=click.Path(exists=True, dir_okay=False),
              help="A COCO-format annotation file (instances_*.json, coco_wholebody_*.json) instead of --wider-root.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False),
              help="With --coco: the folder its images[].file_name are in (COCO 2017: train2017/, val2017/).")
@click.option("--boxes", type=click.Choice(["face", "person"]), default=None,
              help="With --coco: COCO-WholeBody face_box (face, the default) or COCO's person bbox (person).")
@click.option("--split", required=True, type=click.Choice(["train", "val", "test"]))
@click.option("--out", "out_url", required=True, help="Local folder or s3://bucket/prefix.")
@click.option("--shard-size-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Target shard size.")
def build(wider_root: str | None, coco_annotations: str | None, images_dir: str | None, boxes: str | None, split: str,
          out_url: str, shard_size_mb: float) -> None:
    """Write one split's shards, then its manifest (resumes an interrupted run).

    From the WIDER FACE layout (--wider-root), or from a COCO-format annotation file and its images
    (--coco, --images, --boxes), without a WIDER-format copy on disk.
    """
    from data_shards.coco import CocoFormatError
    from data_shards.images import ImageError
    from data_shards.storage import StorageAccessError
    from data_shards.wider_layout import WiderFormatError

    if (wider_root is None) == (coco_annotations is None):
        raise click.UsageError("give either --wider-root DIR or --coco ANNOTATIONS.json --images DIR")
    if coco_annotations is None and (images_dir or boxes):
        raise click.UsageError("--images and --boxes go with --coco")
    if coco_annotations is not None and images_dir is None:
        raise click.UsageError("--coco needs --images DIR, the folder holding the split's images")
    if coco_annotations is not None and split == "test":
        raise click.UsageError("--coco builds train or val splits (COCO's test images carry no annotations)")
    try:
        if coco_annotations is not None:
            from data_shards.coco_shards import build_coco_split

            manifest = build_coco_split(coco_annotations, images_dir, split, out_url, boxes=boxes or "face",
                                        shard_size_mb=shard_size_mb)
        else:
            from data_shards.shard_writer import build_split

            manifest = build_split(wider_root, split, out_url, shard_size_mb=shard_size_mb)
    except (StorageAccessError, ImageError) as exn:  # name the URL or the image file, and the fix
        raise click.ClickException(str(exn)) from None
    except (WiderFormatError, CocoFormatError) as exn:  # names the annotation file and line, or annotation id
        raise click.ClickException(f"{exn}; fix the annotation file (or use the official download's) and "
                                   "run the same command again: finished shards are kept") from None
    except FileNotFoundError as exn:
        where = ("--coco and --images must name the annotation file and its images folder" if coco_annotations
                 else "--wider-root must hold the WIDER FACE layout (WIDER_<split>/images, wider_face_split/)")
        raise click.ClickException(f"{exn}: {where}") from None
    what = "faces" if manifest.boxes == "face" else f"{manifest.boxes} boxes"
    click.echo(f"{split}: {len(manifest.shards)} shards, {manifest.samples} images, {manifest.faces} {what}, "
               f"{manifest.bytes / 1e6:.1f} MB -> {out_url}")


@shards.command()
@click.argument("url")
@click.option("--verify", is_flag=True, help="Download every shard and check its sha256.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def inspect(url: str, verify: bool, as_json: bool) -> None:
    """Print the complete splits under URL: shards, images, faces, bytes."""
    from data_shards.manifest import find_manifests, verify_manifest
    from data_shards.storage import StorageAccessError, check_access

    try:
        check_access(url)
        found = find_manifests(url)
    except (StorageAccessError, ValueError) as exn:  # ValueError: a manifest that is not one, named
        raise click.ClickException(str(exn)) from None
    problems: dict[str, list[str]] = {}
    if verify:
        problems = {split: verify_manifest(murl, m) for split, (murl, m) in found.items()}
    if as_json:
        out = {"splits": {split: {"images": m.samples, "faces": m.faces, "shards": len(m.shards), "bytes": m.bytes}
                          for split, (_, m) in found.items()}}
        if verify:
            out["problems"] = problems
        click.echo(json.dumps(out, indent=2))
    else:
        if not found:
            click.echo(f"no complete split under {url}")
        for split, (murl, m) in found.items():
            click.echo(f"{split:5s} {len(m.shards):4d} shards {m.samples:7d} images {m.faces:8d} faces "
                       f"{m.bytes / 1e6:9.1f} MB  {murl}")
            if verify:
                click.echo(f"      verify: {'ok' if not problems[split] else 'FAILED'}")
                for p in problems[split]:
                    click.echo(f"        {p}")
    if any(problems.values()):
        raise SystemExit(1)
