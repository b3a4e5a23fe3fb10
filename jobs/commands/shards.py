"""`isrn shards build|inspect`: WebDataset shards of WIDER FACE in a folder or S3.

    isrn shards build --wider-root /tmp/wider-synth --split train --out s3://isrn-data/wider
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
    """Build and inspect WebDataset shards of WIDER FACE."""


@shards.command()
@click.option("--wider-root", required=True, type=click.Path(exists=True, file_okay=False), help="Root of the WIDER FACE layout.")
@click.option("--split", required=True, type=click.Choice(["train", "val", "test"]))
@click.option("--out", "out_url", required=True, help="Local folder or s3://bucket/prefix.")
@click.option("--shard-size-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Target shard size.")
def build(wider_root: str, split: str, out_url: str, shard_size_mb: float) -> None:
    """Write one split's shards, then its manifest (resumes an interrupted run)."""
    from data_shards.images import ImageError
    from data_shards.shard_writer import build_split
    from data_shards.storage import StorageAccessError
    from data_shards.wider_layout import WiderFormatError

    try:
        manifest = build_split(wider_root, split, out_url, shard_size_mb=shard_size_mb)
    except (StorageAccessError, ImageError) as exn:  # name the URL or the image file, and the fix
        raise click.ClickException(str(exn)) from None
    except WiderFormatError as exn:  # names the annotation file and line
        raise click.ClickException(f"{exn}; fix the annotation file (or use the official download's) and "
                                   "run the same command again: finished shards are kept") from None
    except FileNotFoundError as exn:
        raise click.ClickException(f"{exn}: --wider-root must hold the WIDER FACE layout "
                                   "(WIDER_<split>/images, wider_face_split/)") from None
    click.echo(f"{split}: {len(manifest.shards)} shards, {manifest.samples} images, {manifest.faces} faces, "
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
