"""`isrn data synth | prepare`: generated WIDER-format data sets (with their COCO-format annotations
beside them, `coco/coco_wholebody_{train,val}.json`, see `data_shards.synth_coco`), and a spec's data
made ready.

    isrn data synth --out /tmp/wider-synth --train 400 --val 100 --seed 0
    isrn data prepare demo          # the demo spec's data set and its shards in S3 (if missing)
"""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Generate WIDER-format data sets; prepare a spec's generated data."""


@data.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the data set into.")
@click.option("--train", "n_train", default=400, show_default=True, type=click.IntRange(min=0), help="Training images.")
@click.option("--val", "n_val", default=100, show_default=True, type=click.IntRange(min=0), help="Validation images.")
@click.option("--test", "n_test", default=0, show_default=True, type=click.IntRange(min=0), help="Test images (no annotations).")
@click.option("--seed", default=0, show_default=True, type=int, help="Everything generated is a function of the seed.")
@click.option("--width", "image_width", default=640, show_default=True, type=click.IntRange(min=64), help="Image width in pixels.")
def synth(out_dir: str, n_train: int, n_val: int, n_test: int, seed: int, image_width: int) -> None:
    """Paste drawn people (head and shoulders, faces sharp at their size) onto real photographs, in the
    official WIDER FACE layout, with COCO-format annotations of the same images (person bbox and
    WholeBody face_box) in OUT/coco/."""
    from data_shards.synth import SynthConfig, face_settings, generate_dataset
    from data_shards.synth_coco import write_coco_split

    out = generate_dataset(out_dir, train=n_train, val=n_val, test=n_test, seed=seed,
                           config=SynthConfig(image_width=image_width))
    for split in ("train", "val"):
        faces = [f for r in out[split] for f in r.faces]
        counts = {s: sum(s in face_settings(f) for f in faces) for s in ("easy", "medium", "hard")}
        click.echo(f"{split}: {len(out[split])} images, {len(faces)} faces "
                   f"(easy {counts['easy']}, medium {counts['medium']}, hard {counts['hard']})")
    click.echo(f"test: {len(out['test'])} images")
    for split in ("train", "val"):
        click.echo(f"COCO format: {write_coco_split(out_dir, split, out[split])} (images: "
                   f"{out_dir}/WIDER_{split}/images)")
    click.echo(f"wrote {out_dir}")


@data.command()
@click.argument("spec")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field.")
def prepare(spec: str, overrides: tuple[str, ...]) -> None:
    """Generate SPEC's data set (its data.synth section) and build its shards where they are missing.

    `isrn train` does the same before training a spec that has data.synth; this runs it alone.
    """
    from jobs.data_prep import generate_synth, prepare_data
    from jobs.environment import JobEnvironment
    from jobs.errors import ConfigError, ServiceUnavailableError
    from jobs.preflight import check_storage
    from jobs.spec import load_spec

    try:
        job_spec = load_spec(spec, overrides)
        env = JobEnvironment.resolve()
        check_storage(job_spec, env)
        built = prepare_data(job_spec, env)
    except (ConfigError, ServiceUnavailableError) as error:
        raise click.ClickException(str(error)) from None
    root = generate_synth(job_spec.data.synth)  # kept on disk: `make demo` detects on its val images
    click.echo(f"{job_spec.name}: data set in {root}; shards in {job_spec.data.shards}"
               + (f" (built {', '.join(built)})" if built else " (already built)"))
