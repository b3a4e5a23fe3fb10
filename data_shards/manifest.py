"""The manifest of one split's shards: `<url>/<split>/manifest.json`.

A manifest is written last, after every shard it lists is in place, so a split is visible exactly
when it is complete. It records, per shard, the sample and face counts, byte size and sha256, and
for the split the sha256 of the annotation file the shards were built from and what its boxes
outline (`boxes`: face, or person for COCO's person boxes), and for a generated set what it was
generated from (`source`: `data_shards.synth.dataset_fingerprint`). The val split also
lists the official ground-truth .mat files uploaded beside it (`ground_truth/…`), which the WIDER
metric reads (`fetch_ground_truth`).

    {"format": "isrn-wider-shards/1", "split": "val", "created": "...",
     "annotation_file": "wider_face_split/wider_face_val_bbx_gt.txt", "annotation_sha256": "...", "boxes": "face",
     "source": "synth-...",
     "shards": [{"name": "val-000000.tar", "samples": 41, "faces": 390, "bytes": 5242880,
                 "sha256": "..."}, ...],
     "ground_truth": {"wider_hard_val.mat": {"name": "ground_truth/wider_hard_val.mat",
                                             "bytes": 1234, "sha256": "..."}, ...}}
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_shards.storage import S3Settings, join_url, open_store

FORMAT = "isrn-wider-shards/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    name: str
    """File name relative to the manifest's folder."""
    samples: int
    faces: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    split: str
    shards: tuple[ShardEntry, ...]
    annotation_file: str
    annotation_sha256: str
    created: str = ""
    ground_truth: dict[str, dict] = field(default_factory=dict)
    boxes: str = "face"
    """What the records' boxes outline: `face` (WIDER FACE, COCO-WholeBody `face_box`) or `person`
    (COCO `bbox`). Manifests written before this field read as `face`."""
    source: str = ""
    """For shards of a data set the platform generated (a spec's `data.synth`), its fingerprint
    (`synth-…`: settings and generator code), so a changed spec or generator is seen to need new
    shards; empty for shards built from a folder by `isrn shards build`, and in older manifests."""
    format: str = FORMAT

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def faces(self) -> int:
        return sum(s.faces for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        data = asdict(self)
        data["shards"] = [asdict(s) for s in self.shards]
        data.update(samples=self.samples, faces=self.faces, bytes=self.bytes)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<manifest>") -> Manifest:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this isrn reads {FORMAT!r}")
            manifest = cls(
                split=data["split"],
                shards=tuple(ShardEntry(**s) for s in data["shards"]),
                annotation_file=data["annotation_file"],
                annotation_sha256=data["annotation_sha256"],
                created=data.get("created", ""),
                ground_truth=data.get("ground_truth", {}),
                boxes=data.get("boxes", "face"),
                source=data.get("source", ""),
            )
            if not manifest.shards:
                raise ValueError("it lists no shards")
            names = [s.name for s in manifest.shards] + [g["name"] for g in manifest.ground_truth.values()]
            if outside := [name for name in names if not _inside(name)]:
                raise ValueError(f"{outside[0]!r} is not a file in the manifest's folder")
            return manifest
        except (ValueError, KeyError, TypeError) as exn:
            reason = f"field {exn} is missing" if isinstance(exn, KeyError) else str(exn)
            raise ValueError(f"{source}: not a valid shard manifest ({reason}); rebuild the split with "
                             "`isrn shards build` (or read it with the isrn version that wrote it)") from exn


def _inside(name: str) -> bool:
    """A relative name that stays in its folder (no `..`, not absolute)."""
    return posixpath.normpath(name) == name and not name.startswith(("/", "../")) and name not in (".", "..")


def manifest_url(base_url: str, split: str) -> str:
    """`<base>/<split>/manifest.json`."""
    return join_url(base_url, split, MANIFEST_NAME)


def split_manifest_url(url: str) -> tuple[str, str]:
    """(folder URL, manifest file name) of a manifest URL."""
    folder, name = posixpath.split(url.rstrip("/"))
    return folder, name


def read_manifest(url: str, settings: S3Settings | None = None) -> Manifest:
    """Read a manifest from its URL (`…/<split>/manifest.json`, local path or s3://)."""
    folder, name = split_manifest_url(url)
    try:
        data = open_store(folder, settings).get_bytes(name)
    except FileNotFoundError:
        base, split = posixpath.split(folder)
        raise FileNotFoundError(f"no shard manifest at {url}: build the split with `isrn shards build --wider-root "
                                f"DIR --split {split} --out {base}` (COCO-format data: --coco ANNOTATIONS.json "
                                "--images DIR instead of --wider-root), or fix the URL") from None
    return Manifest.from_json(data, source=url)


def shard_urls(url: str, manifest: Manifest) -> list[str]:
    """Absolute URLs of the manifest's shards (local paths or s3://)."""
    folder, _ = split_manifest_url(url)
    return [join_url(folder, s.name) for s in manifest.shards]


def find_manifests(base_url: str, settings: S3Settings | None = None) -> dict[str, tuple[str, Manifest]]:
    """Every split under `base_url`: split -> (manifest URL, manifest). Incomplete splits are absent."""
    store = open_store(base_url, settings)
    out: dict[str, tuple[str, Manifest]] = {}
    for name in store.list():
        if posixpath.basename(name) == MANIFEST_NAME:
            manifest = Manifest.from_json(store.get_bytes(name), source=store.url(name))
            out[manifest.split] = (store.url(name), manifest)
    return dict(sorted(out.items()))


class ShardMismatchError(ValueError):
    """The shards in storage are not the ones the manifest lists: missing, another size, another sha256."""


def check_shards(url: str, manifest: Manifest, settings: S3Settings | None = None, *, verify: bool = False) -> None:
    """Every shard of the manifest exists with the manifest's size (one HEAD each); with `verify`, also
    its sha256 (downloads the split). Raises `ShardMismatchError` naming each shard and the fix."""
    folder, _ = split_manifest_url(url)
    store = open_store(folder, settings)
    problems = []
    for shard in manifest.shards:
        found = store.stat(shard.name)
        if found is None:
            problems.append(f"{shard.name}: missing")
        elif found[0] != shard.bytes:
            problems.append(f"{shard.name}: {found[0]} bytes, the manifest says {shard.bytes}")
    if not problems and verify:
        problems = verify_manifest(url, manifest, settings)
    if problems:
        raise ShardMismatchError(
            f"{url}: the shards do not match their manifest ({'; '.join(problems[:5])}"
            f"{f'; and {len(problems) - 5} more' if len(problems) > 5 else ''}); rebuild the split with "
            f"`isrn shards build` (it resumes) or restore the shards; `isrn shards inspect --verify` checks them all")


def verify_manifest(url: str, manifest: Manifest, settings: S3Settings | None = None) -> list[str]:
    """Download every shard and ground-truth file and check size and sha256; returns the problems.

    A progress bar (bytes) shows on a terminal."""
    from tqdm import tqdm

    folder, _ = split_manifest_url(url)
    store = open_store(folder, settings)
    problems = []
    entries = [(s.name, s.bytes, s.sha256) for s in manifest.shards]
    entries += [(g["name"], g["bytes"], g["sha256"]) for g in manifest.ground_truth.values()]
    bar = tqdm(total=sum(size for _, size, _ in entries), desc=f"verify {manifest.split}", unit="B",
               unit_scale=True, disable=None)
    for name, size, sha in entries:
        digest, n = hashlib.sha256(), 0
        try:
            with store.open(name) as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    n += len(block)
                    bar.update(len(block))
        except Exception as exn:  # missing object, connection error: report, keep checking
            problems.append(f"{name}: cannot read: {exn}")
            continue
        if n != size or digest.hexdigest() != sha:
            problems.append(f"{name}: {n} bytes sha256 {digest.hexdigest()[:12]}…, manifest says "
                            f"{size} bytes sha256 {sha[:12]}…")
    bar.close()
    return problems


def fetch_ground_truth(url: str, dest: str | Path, settings: S3Settings | None = None) -> dict[str, Path]:
    """Download the val split's official .mat files next to its manifest into `dest`.

    Returns file name -> local path; `isrn_model.wider_eval.load_ground_truth(dest)` reads them.
    """
    manifest = read_manifest(url, settings)
    if not manifest.ground_truth:
        raise FileNotFoundError(f"{url}: split {manifest.split!r} carries no ground-truth .mat files")
    folder, _ = split_manifest_url(url)
    store = open_store(folder, settings)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for file_name, entry in manifest.ground_truth.items():
        data = store.get_bytes(entry["name"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{store.url(entry['name'])}: sha256 does not match the manifest")
        (dest / file_name).write_bytes(data)
        out[file_name] = dest / file_name
    return out
