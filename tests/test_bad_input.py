"""Bad input, one row per case: the input, what meets it, and what the user gets.

    PYTHONPATH=$PWD python -m pytest tests/test_bad_input.py -q     # prints the corpus table at the end

Each row builds its input in the test's temporary folder (`given`), hands it to the command or API
that meets it in real use (`when`: `isrn …` through click's CliRunner, or the library call), and
expects one outcome:

- `Error(thing, fix)`: the command exits with a message and no traceback (the API raises its
  module's error), and the message names the thing (file and line, field, URL, shard: `thing`)
  and says what to do (`fix`);
- `Skip(count, logged)`: the loader skips the bad sample (or what a broken tar held), counts `count`
  skips in its batches' `skipped`, logs each (`logged` names the shard or member), and still
  delivers every good sample;
- `Accepted()`: the input is legitimately fine and is read in full; images arrive 8-bit, 3-channel
  (RGB in the batch), at their stored size (EXIF orientation not applied) and with their pixels.

Whatever the outcome, nothing is published or lost, checked on every row (`published_or_lost`):
the train and val splits published before the row (`published/`) still verify, byte for byte; a
failed build publishes no manifest and leaves no half-written file (a shard it finished is a
complete tar, invisible without a manifest); readers write nothing anywhere under the row's folder,
which is also the working directory (a tar member `../../x` would land there if extracted). Rows
on the real S3 (marked `integration`) check their bucket the same way. No MLflow or Ray is started:
unreachable services are dead loopback ports.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from data_shards.loader import LoaderConfig, make_val_loader
from data_shards.manifest import MANIFEST_NAME, Manifest, ShardEntry, check_shards, read_manifest
from data_shards.shard_writer import build_split
from data_shards.storage import StorageAccessError
from data_shards.wider_layout import WiderFormatError, WiderLayout
from isrn_model.wider_eval import ground_truth_from_arrays, save_ground_truth, write_predictions
from jobs import preflight
from jobs.cli import main
from jobs.environment import JobEnvironment
from jobs.errors import ConfigError, ServiceUnavailableError
from jobs.spec import load_spec
from jobs.train import faults
from tests.conftest import free_ports

# ---------------------------------------------------------------- outcomes


@dataclasses.dataclass(frozen=True)
class Error:
    """A clear error: the message matches `thing` (what is wrong, where) and `fix` (what to do)."""

    thing: str
    fix: str


@dataclasses.dataclass(frozen=True)
class Skip:
    """`count` skips, counted in the batches and logged (`logged` matches each log line)."""

    count: int
    logged: str


@dataclasses.dataclass(frozen=True)
class Accepted:
    """Legitimately fine input, read in full."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    error: str | None = None
    """The message the user saw (a command's output, an exception's text); None: it went through."""
    keys: tuple[str, ...] = ()
    """Samples a loader delivered, as `event/name`."""
    wanted: tuple[str, ...] = ()
    """Samples it had to deliver: every good one."""
    skipped: int = 0


@dataclasses.dataclass
class Row:
    """One row's world: its folder (also the working directory), the published splits, a WIDER layout."""

    root: Path
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch
    s3: Any = None
    bucket: str | None = None

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def wider(self) -> Path:
        return self.root / "wider"

    def env(self, **variables: str) -> None:
        for name, value in variables.items():
            self.monkeypatch.setenv(name, value)


Given = Callable[[Row], Any]
When = Callable[[Row, Any], Outcome]


@dataclasses.dataclass(frozen=True)
class Case:
    given: Given
    when: When
    expect: Error | Skip | Accepted
    integration: bool = False


def case(id: str, given: Given, when: When, expect: Error | Skip | Accepted, *, integration: bool = False):
    return pytest.param(Case(given, when, expect, integration), id=id,
                        marks=[pytest.mark.integration] if integration else [])


# ---------------------------------------------------------------- the good data set every row starts from

HEIGHT, WIDTH = 48, 64
GOOD = """\
0--Parade/0_Parade_a.jpg
1
10 10 20 20 0 0 0 0 0 0 
0--Parade/0_Parade_b.jpg
0
0 0 0 0 0 0 0 0 0 0 
1--Handshaking/1_Handshaking_c.jpg
2
5 6 12 14 1 0 0 0 0 0 
30 8 10 12 0 0 0 0 0 0 
"""
GOOD_KEYS = ("0--Parade/0_Parade_a", "0--Parade/0_Parade_b", "1--Handshaking/1_Handshaking_c")
ANNOTATION = "wider_face_split/wider_face_train_bbx_gt.txt"
SUBJECT = "2--Demonstration/2_Demonstration_s"
"""The image an image row adds, with one face, as the 4th record (its path is on line 11)."""
LOADED_SUBJECT = "3--Riot/3_Riot_x"
"""The sample a loader row puts between two good ones."""


def pixels(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth BGR uint8 test image (smooth: JPEG keeps it within a few levels)."""
    noise = np.random.default_rng(seed).random((height, width, 3)) * 255
    return cv2.GaussianBlur(noise.astype(np.uint8), (7, 7), 2)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def write_layout(root: Path, split: str, text: str) -> None:
    for i, key in enumerate(GOOD_KEYS):
        path = root / f"WIDER_{split}" / "images" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(pixels(i)))
    (root / "wider_face_split").mkdir(exist_ok=True)
    (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(text)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wider/` (train and val, the val ground truth's .mat files) and `published/` (both splits built)."""
    root = tmp_path_factory.mktemp("bad-input-template")
    wider = root / "wider"
    write_layout(wider, "train", GOOD)
    write_layout(wider, "val", GOOD)
    records = WiderLayout(wider).records("val")
    truth = ground_truth_from_arrays(
        [r.event for r in records], [r.name for r in records],
        [np.array([f.xywh() for f in r.faces]).reshape(-1, 4) for r in records],
        {s: [np.arange(len(r.faces)) for r in records] for s in ("easy", "medium", "hard")})
    save_ground_truth(truth, wider / "ground_truth")
    for split in ("train", "val"):
        build_split(wider, split, str(root / "published"), shard_size_mb=0.004, progress=False)  # 2 shards
    return root


# ---------------------------------------------------------------- encoded images


def exif_rotated() -> bytes:
    """A 64 × 48 JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(pixels(7)[..., ::-1]).save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels(7)[..., ::-1]).convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


def cut_in_scan(data: bytes) -> bytes:
    """A JPEG cut 100 bytes into its entropy-coded data: the header reads, the pixels do not."""
    return data[: data.index(b"\xff\xda") + 100]


def declaring(width: int, height: int) -> bytes:
    """A ~1 kB JPEG whose frame header (SOF0) declares `width` × `height` pixels: a decompression bomb."""
    data = bytearray(jpeg(pixels(7)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


IMAGES: dict[str, Callable[[], bytes]] = {
    "zero-bytes": lambda: b"",
    "truncated": lambda: cut_in_scan(jpeg(pixels(7))),
    "text": lambda: b"<html>404 Not Found</html>\n",
    "bomb-30000": lambda: declaring(30000, 30000),
    "bomb-9000": lambda: declaring(9000, 9000),
    "png-as-jpg": lambda: cv2.imencode(".png", pixels(7))[1].tobytes(),
    "cmyk": cmyk_jpeg,
    "grayscale": lambda: jpeg(cv2.cvtColor(pixels(7), cv2.COLOR_BGR2GRAY)),
    "png-16-bit": lambda: cv2.imencode(".png", pixels(7).astype(np.uint16) * 257)[1].tobytes(),
    "png-alpha": lambda: cv2.imencode(".png", cv2.cvtColor(pixels(7), cv2.COLOR_BGR2BGRA))[1].tobytes(),
    "exif-rotated": exif_rotated,
}


# ---------------------------------------------------------------- givens: inputs built in the row's folder


def annotation(text: str | bytes) -> Given:
    """The good layout with this train annotation file (bytes: written as they are)."""
    def given(row: Row) -> Path:
        path = row.wider / ANNOTATION
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return row.wider
    return given


def edited(old: str, new: str) -> Given:
    assert GOOD.count(old) == 1, old
    return annotation(GOOD.replace(old, new))


def with_image(kind: str) -> Given:
    """The good layout plus SUBJECT, encoded as IMAGES[kind], with one face."""
    def given(row: Row) -> Path:
        path = row.wider / "WIDER_train" / "images" / f"{SUBJECT}.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(IMAGES[kind]())
        (row.wider / ANNOTATION).write_text(GOOD + f"{SUBJECT}.jpg\n1\n4 4 16 16 0 0 0 0 0 0 \n")
        return row.wider
    return given


def without(*names: str) -> Given:
    def given(row: Row) -> Path:
        for name in names:
            (row.wider / name).unlink()
        return row.wider
    return given


COCO_JSON = "coco/ann.json"
COCO_KEYS = ("0--Parade/0_Parade_a", "1--Handshaking/1_Handshaking_c")
"""The images of GOOD with a face: what a COCO build of it shards (0_Parade_b has no annotation)."""


def coco_good() -> dict:
    """GOOD as a COCO-WholeBody file over the same images: ids 1-3, one person per face (annotations 1-3),
    its bbox the face box."""
    boxes = [(1, [10, 10, 20, 20]), (3, [5, 6, 12, 14]), (3, [30, 8, 10, 12])]
    return {
        "images": [{"id": i, "file_name": f"{key}.jpg", "width": WIDTH, "height": HEIGHT}
                   for i, key in enumerate(GOOD_KEYS, 1)],
        "annotations": [{"id": k, "image_id": image_id, "category_id": 1, "bbox": box, "iscrowd": 0,
                         "face_box": box, "face_valid": True} for k, (image_id, box) in enumerate(boxes, 1)],
        "categories": [{"id": 1, "name": "person"}],
    }


@dataclasses.dataclass(frozen=True)
class Coco:
    """A COCO annotation file over the row's WIDER_train images, and the samples a build must deliver."""

    annotations: Path
    wanted: tuple[str, ...] = COCO_KEYS


def coco(edit: Callable[[dict], Any] | None = None, *, text: str | bytes | None = None, image: str | None = None,
         wanted: tuple[str, ...] = COCO_KEYS) -> Given:
    """`coco/ann.json`: coco_good() edited (`edit` on the data; `text`: the file as given). `image`: SUBJECT
    encoded as IMAGES[image] is added as image id 4, with one person (annotation 4)."""
    def given(row: Row) -> Coco:
        data = coco_good()
        if image is not None:
            path = row.wider / "WIDER_train" / "images" / f"{SUBJECT}.jpg"
            path.parent.mkdir(parents=True)
            path.write_bytes(IMAGES[image]())
            data["images"].append({"id": 4, "file_name": f"{SUBJECT}.jpg", "width": WIDTH, "height": HEIGHT})
            data["annotations"].append({"id": 4, "image_id": 4, "category_id": 1, "bbox": [4, 4, 16, 16],
                                        "iscrowd": 0, "face_box": [4, 4, 16, 16], "face_valid": True})
        if edit is not None:
            edit(data)
        path = row.root / COCO_JSON
        path.parent.mkdir(exist_ok=True)
        content = json.dumps(data) if text is None else text
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return Coco(path, (*wanted, SUBJECT) if image is not None and wanted == COCO_KEYS else wanted)
    return given


def annotation_field(index: int, name: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data["annotations"][index].__setitem__(name, value)


def image_field(index: int, name: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data["images"][index].__setitem__(name, value)


def without_face_boxes(data: dict) -> None:
    """COCO's own instances_*.json: person bbox, no WholeBody fields."""
    for ann in data["annotations"]:
        del ann["face_box"], ann["face_valid"]


def filelist(text: str) -> Given:
    def given(row: Row) -> Path:
        (row.wider / "wider_face_split" / "wider_face_test_filelist.txt").write_text(text)
        return row.wider
    return given


@dataclasses.dataclass(frozen=True)
class Member:
    """One tar member; `kind` a tarfile type (REGTYPE, SYMTYPE, …)."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""


def sample(key: str, image: bytes | None = None, *, width: int = WIDTH, height: int = HEIGHT,
           meta: bytes | None = None) -> list[Member]:
    """`key.jpg` and `key.json` as the shard writer stores them."""
    event, name = key.split("/")[-2:]
    record = {"key": key, "event": event, "name": name, "width": width, "height": height,
              "faces": [{"x": 4, "y": 4, "w": 16, "h": 16, "blur": 0, "expression": 0, "illumination": 0,
                         "invalid": 0, "occlusion": 0, "pose": 0}]}
    return [Member(f"{key}.jpg", jpeg(pixels(9)) if image is None else image),
            Member(f"{key}.json", json.dumps(record).encode() if meta is None else meta)]


def good(i: int) -> list[Member]:
    return sample(f"9--Good/9_Good_{i}")


def tar_bytes(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname = m.kind, m.link
            info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class Shards:
    """A split written by hand (as bit rot, another tool or a hostile file leaves it)."""

    manifest: Path
    wanted: tuple[str, ...]
    never_decode: tuple[bytes, ...] = ()


def shards(*subject: Member | list[Member], wanted: tuple[str, ...] = ("9--Good/9_Good_0", "9--Good/9_Good_1"),
           never_decode: tuple[bytes, ...] = ()) -> Given:
    """A train split of one shard: good sample 0, the subject's members, good sample 1."""
    members = [m for part in subject for m in (part if isinstance(part, list) else [part])]

    def given(row: Row) -> Shards:
        return write_split(row.root / "shards" / "train", {"train-000000.tar": keyed([*good(0), *members, *good(1)])},
                           wanted, never_decode)
    return given


def write_split(folder: Path, tars: dict[str, tuple[bytes, int]], wanted: tuple[str, ...],
                never_decode: tuple[bytes, ...] = ()) -> Shards:
    """The shards as given, `{name: (bytes, samples written)}`; the manifest states their stored sizes
    and sha256 (the loader refuses any other), and the samples that went into each."""
    folder.mkdir(parents=True)
    entries = []
    for name, (data, samples) in tars.items():
        (folder / name).write_bytes(data)
        entries.append(ShardEntry(name, samples, samples, len(data), hashlib.sha256(data).hexdigest()))
    (folder / MANIFEST_NAME).write_text(Manifest("train", tuple(entries), "x", "0" * 64).to_json())
    return Shards(folder / MANIFEST_NAME, wanted, never_decode)


def keyed(members: list[Member]) -> tuple[bytes, int]:
    """A tar of `members` and its number of samples (distinct keys)."""
    return tar_bytes(members), len({m.name.rsplit(".", 1)[0] for m in members if "." in m.name})


def truncated_shards(row: Row) -> Shards:
    """Shard 0 cut inside good sample 2's JPEG; shard 1 intact (a good sample after the cut)."""
    whole, samples = keyed([*good(0), *good(1), *good(2)])
    cut = whole.index(b"9_Good_2.jpg") + 1024  # past that member's header, inside its data
    return write_split(row.root / "shards" / "train",
                       {"train-000000.tar": (whole[:cut], samples), "train-000001.tar": keyed(good(3))},
                       ("9--Good/9_Good_0", "9--Good/9_Good_1", "9--Good/9_Good_3"))


def bad_shard_then_good(data: bytes) -> Given:
    def given(row: Row) -> Shards:
        return write_split(row.root / "shards" / "train",
                           {"train-000000.tar": (data, 2), "train-000001.tar": keyed([*good(0), *good(1)])},
                           ("9--Good/9_Good_0", "9--Good/9_Good_1"))
    return given


def published_manifest(edit: Callable[[dict], Any] | None = None, *, text: str | None = None,
                       shard: Callable[[Path], None] | None = None) -> Given:
    """The published train split, its manifest edited (`edit` on the JSON, or replaced by `text`) or
    one of its shards changed (`shard`)."""
    def given(row: Row) -> Shards:
        url = row.published / "train" / MANIFEST_NAME
        if edit is not None:
            data = json.loads(url.read_text())
            edit(data)
            url.write_text(json.dumps(data))
        if text is not None:
            url.write_text(text)
        if shard is not None:
            shard(url.parent / read_manifest(str(url)).shards[0].name)
        return Shards(url, GOOD_KEYS)
    return given


def removed(*names: str) -> Given:
    """The published splits with these files (relative to the row's folder) deleted."""
    def given(row: Row) -> Shards:
        for name in names:
            (row.root / name).unlink()
        return Shards(row.published / "train" / MANIFEST_NAME, GOOD_KEYS)
    return given


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))


GT_EVENTS, GT_NAMES = ["0--Parade", "0--Parade"], ["0_Parade_a", "0_Parade_b"]


def ground_truth(edit: Callable[[Path], None] | None = None, *, predicted_event: str = "0--Parade") -> Given:
    """`gt/` (the four official .mat files, then `edit`) and `pred/` for two val images."""
    def given(row: Row) -> tuple[Path, Path]:
        truth = ground_truth_from_arrays(GT_EVENTS, GT_NAMES, [np.array([[10, 10, 20, 20]]), np.array([[5, 5, 9, 9]])],
                                         {s: [[0], [0]] for s in ("easy", "medium", "hard")})
        save_ground_truth(truth, row.root / "gt")
        detections = {(predicted_event, name): np.array([[10, 10, 20, 20, 0.9]]) for name in GT_NAMES}
        write_predictions(row.root / "pred", detections)
        if edit is not None:
            edit(row.root / "gt")
        return row.root / "pred", row.root / "gt"
    return given


def mat_edit(file: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(gt: Path) -> None:
        mat = {k: v for k, v in scipy.io.loadmat(gt / file).items() if not k.startswith("__")}
        change(mat)
        scipy.io.savemat(gt / file, mat)
    return edit


def boxes_of(image: int, boxes: np.ndarray) -> Callable[[Path], None]:
    """wider_face_val.mat with the face_bbx_list cell of image `image` (of event 0) replaced."""
    def change(mat: dict) -> None:
        mat["face_bbx_list"][0, 0][image, 0] = boxes
    return mat_edit(MAIN_MAT, change)


def hard_faces_of(image: int, one_based: np.ndarray) -> Callable[[Path], None]:
    """wider_hard_val.mat with the gt_list cell of image `image` (of event 0) replaced."""
    def change(mat: dict) -> None:
        mat["gt_list"][0, 0][image, 0] = one_based
    return mat_edit(HARD_MAT, change)


def hard_event_named(event: str) -> Callable[[Path], None]:
    def change(mat: dict) -> None:
        mat["event_list"][0, 0] = np.array([event])
    return mat_edit(HARD_MAT, change)


def spec_file(text: str) -> Given:
    def given(row: Row) -> str:
        (row.root / "job.yaml").write_text(text)
        return str(row.root / "job.yaml")
    return given


def s3_variables(*, access_key: str | None = "same", secret_key: str | None = "same", endpoint: str = "dead") -> Given:
    """AWS_* for the row: the session S3's endpoint and keys ("same"), another value, or unset (None)."""
    def given(row: Row) -> None:
        live = row.s3.env() if row.s3 else {}
        values = {"AWS_ENDPOINT_URL": live.get("AWS_ENDPOINT_URL") if endpoint == "live" else dead_url(),
                  "AWS_ACCESS_KEY_ID": live.get("AWS_ACCESS_KEY_ID", "key") if access_key == "same" else access_key,
                  "AWS_SECRET_ACCESS_KEY": live.get("AWS_SECRET_ACCESS_KEY", "secret") if secret_key == "same"
                  else secret_key}
        for name, value in values.items():
            if value is None:
                row.monkeypatch.delenv(name, raising=False)
            else:
                row.env(**{name: value})
    return given


def nothing(row: Row) -> None:
    return None


def dead_url() -> str:
    return f"http://127.0.0.1:{DEAD_PORT}"


DEAD_PORT = free_ports(1)[0]
"""A loopback port nothing listens on (free when the module loads; nothing here binds it)."""


# ---------------------------------------------------------------- whens: the commands and APIs


def isrn(*args: str) -> Outcome:
    """`isrn ARGS` through click's CliRunner: a traceback fails the row, an exit code != 0 is an error."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception.with_traceback(result.exc_info[2])
    return Outcome(error=result.output if result.exit_code else None)


def load(row: Row, split: Shards | Path, *, verify: bool = False) -> Outcome:
    """Every sample of a split through the validation loader (no resizing, no padding, in-process)."""
    if isinstance(split, Path):
        split = Shards(split, tuple(f"{r.event}/{r.name}" for r in WiderLayout(row.wider).records("train")))
    if split.never_decode:  # a bomb must be refused before OpenCV allocates its pixels
        real = cv2.imdecode
        row.monkeypatch.setattr(cv2, "imdecode",
                                lambda buf, flags: _refuse(buf, split.never_decode) or real(buf, flags))
    config = LoaderConfig(num_workers=0, val_batch_size=1, val_max_size=1 << 14, val_size_multiple=1, verify=verify)
    try:
        loader = make_val_loader(str(split.manifest), config)
    except (ValueError, FileNotFoundError, StorageAccessError) as error:
        return Outcome(error=str(error))
    keys, skipped = [], 0
    for batch in loader:
        skipped += batch["skipped"]
        for (event, name), valid, image, size in zip(batch["keys"], batch["valid"].tolist(), batch["images"],
                                                      batch["image_sizes"].tolist(), strict=True):
            if valid:
                keys.append(f"{event}/{name}")
                assert list(image.shape) == [3, *size], f"{event}/{name}: decoded {list(image.shape)}, stored {size}"
                if f"{event}/{name}" in (SUBJECT, LOADED_SUBJECT):  # the pixels of IMAGES[kind], whatever the kind
                    assert_looks_like(image.permute(1, 2, 0).numpy(), pixels(7), f"{event}/{name}")
    return Outcome(keys=tuple(keys), wanted=split.wanted, skipped=skipped)


def assert_looks_like(rgb: np.ndarray, bgr: np.ndarray, what: str) -> None:
    """`rgb` (float, as in a batch) shows the picture `bgr`, in 8-bit levels: compared as luminance, so
    a grayscale, CMYK, 16-bit or alpha encoding of it passes and a rotated or rescaled one does not."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    reference = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert rgb.max() <= 255 and np.abs(gray - reference).mean() < 6, f"{what}: not the picture it encodes"


def _refuse(buf: np.ndarray, never: tuple[bytes, ...]) -> None:
    assert bytes(buf) not in never, "OpenCV was asked to decode a sample over the pixel limit"


def shards_build(row: Row, _: Any) -> Outcome:
    """`isrn shards build` of the row's train split into `published/`; when it succeeds, the split read back."""
    built = isrn("shards", "build", "--wider-root", row.wider, "--split", "train", "--out", row.published,
                 "--shard-size-mb", "0.004")
    return built if built.error else load(row, row.published / "train" / MANIFEST_NAME)


def shards_build_to_s3(row: Row, _: Any) -> Outcome:
    """`isrn shards build` of the good train split to the row's bucket (or a missing one)."""
    return isrn("shards", "build", "--wider-root", row.wider, "--split", "train", "--out",
                f"s3://{row.bucket or 'isrn-no-such-bucket'}/corpus")


def shards_build_to(url: str) -> When:
    return lambda row, _: isrn("shards", "build", "--wider-root", row.wider, "--split", "train", "--out", url)


def coco_build(boxes: str = "face", split: str = "train", *extra: str) -> When:
    """`isrn shards build --coco` of the given file over the row's WIDER_train images into `published/`;
    when it succeeds, the split read back."""
    def when(row: Row, given: Coco) -> Outcome:
        built = isrn("shards", "build", "--coco", given.annotations, "--images", row.wider / "WIDER_train" / "images",
                     "--split", split, "--boxes", boxes, "--out", row.published, "--shard-size-mb", "0.004", *extra)
        if built.error:
            return built
        return load(row, Shards(row.published / split / MANIFEST_NAME, given.wanted))
    return when


def layout_records(split: str) -> When:
    def when(row: Row, wider: Path) -> Outcome:
        try:
            WiderLayout(wider).records(split)
        except WiderFormatError as error:
            return Outcome(error=str(error))
        return Outcome()
    return when


def inspect(row: Row, split: Shards) -> Outcome:
    return isrn("shards", "inspect", split.manifest.parent.parent)


def evaluate(row: Row, folders: tuple[Path, Path]) -> Outcome:
    pred, gt = folders
    return isrn("evaluate", "--predictions", pred, "--ground-truth", gt)


def train_dry_run(*sets: str) -> When:
    """`isrn train SPEC --dry-run --set …`: SPEC is the given spec file, else `smoke`."""
    return lambda row, spec: isrn("train", spec or "smoke", "--dry-run", *(a for s in sets for a in ("--set", s)))


def api(call: Callable[[Row], Any], *errors: type[Exception]) -> When:
    """A library call; `errors` are its documented error types (anything else fails the row)."""
    def when(row: Row, _: Any) -> Outcome:
        try:
            call(row)
        except errors as error:
            return Outcome(error=str(error))
        return Outcome()
    return when


def spec_on_published(row: Row, *sets: str):
    return load_spec("smoke", [f"data.shards={row.published}", "data.synth=null", *sets])


def job_env(**changes: Any) -> JobEnvironment:
    return dataclasses.replace(JobEnvironment.resolve(), **changes)


def read_fingerprints(*sets: str) -> When:
    return api(lambda row: preflight.read_fingerprints(spec_on_published(row, *sets), job_env()), ConfigError)


def checkpoint_storage(storage: str, nodes: list[dict]) -> When:
    return api(lambda row: preflight.check_checkpoint_storage(load_spec("smoke", [f"checkpoint.storage={storage}"]),
                                                              nodes), ConfigError)


def node(cpus: float, *, alive: bool = True, gpus: float = 0) -> dict:
    """A node as `ray.nodes()` lists it (the fields the decision reads)."""
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}}


def quickly(call: Callable[[Row], Any], seconds: float) -> Callable[[Row], Any]:
    """`call`, which must return (or raise) within `seconds`: a dead service must not cost minutes."""
    def timed(row: Row) -> Any:
        start = time.monotonic()
        try:
            return call(row)
        finally:
            assert time.monotonic() - start < seconds, f"took {time.monotonic() - start:.1f} s"
    return timed


def check_storage_of(*sets: str) -> When:
    return api(lambda row: preflight.check_storage(load_spec("smoke", list(sets)), JobEnvironment.resolve()),
               ConfigError, ServiceUnavailableError)


def prepare_with_synth(row: Row, _: Any) -> Outcome:
    """The whole preparation of a spec that generates its data: it must stop before generating any."""
    spec = load_spec("smoke", [f"data.synth.root={row.root / 'generated'}", f"data.shards=s3://{row.bucket}/synth",
                               f"checkpoint.storage=s3://{row.bucket}/runs"])
    from unittest import mock

    from jobs.train.run import prepare_job

    def prepare(row: Row) -> None:
        # The MLflow check comes first and has rows of its own (mlflow-*): here it passes, so the
        # storage check is what stops the preparation, before any data is generated.
        with mock.patch("jobs.train.run.check_tracking_server"):
            prepare_job(spec, JobEnvironment.resolve())

    return api(prepare, ConfigError, ServiceUnavailableError)(row, None)


# ---------------------------------------------------------------- the table

FIX_ANNOTATION = r"fix the annotation file .*run the same command again"
FIX_IMAGE = r"replace the image, or remove its record from the annotation file"
FIX_REBUILD = r"rebuild the split with `isrn shards build`"
FIX_OFFICIAL = r"use the official eval_tools/ground_truth/ files"
ANN = r"wider_face_train_bbx_gt\.txt"
MAIN_MAT = "wider_face_val.mat"
HARD_MAT = "wider_hard_val.mat"


WITH_EVIL = ("9--Good/9_Good_0", "evil/3_Riot_x", "9--Good/9_Good_1")
"""The samples of a shard whose middle sample is named `…/evil/3_Riot_x` (its JSON: event `evil`)."""


def set_(key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data.__setitem__(key, value)


CASES = [
    # ---- WIDER annotation files, through `isrn shards build` (an accepted one is then read back by the loader)
    case("ann-truncated-mid-record", annotation(GOOD[: GOOD.index("30 8")]), shards_build,
         Error(rf"{ANN}:10: 1--Handshaking/1_Handshaking_c\.jpg: expected 2 face line\(s\), file ended",
               FIX_ANNOTATION)),
    case("ann-truncated-after-path", annotation(GOOD + "2--Demonstration/2_Demonstration_x.jpg\n"), shards_build,
         Error(rf"{ANN}:12: missing face count after '2--Demonstration/2_Demonstration_x\.jpg'", FIX_ANNOTATION)),
    case("ann-count-higher-than-faces", edited("0_Parade_a.jpg\n1\n", "0_Parade_a.jpg\n2\n"), shards_build,
         Error(rf"{ANN}:4: face 2 of 0--Parade/0_Parade_a\.jpg: expected 10 integers, got 1",
               r"is the face count above higher than its face lines\?.*" + FIX_ANNOTATION)),
    case("ann-count-lower-than-faces", edited("1_Handshaking_c.jpg\n2\n", "1_Handshaking_c.jpg\n1\n"), shards_build,
         Error(rf"{ANN}:10: expected an image path '<event>/<image>\.jpg', got '30 8 10 12",
               r"is the face count of the record above lower than its face lines\?.*" + FIX_ANNOTATION)),
    case("ann-negative-count", edited("0_Parade_b.jpg\n0\n", "0_Parade_b.jpg\n-1\n"), shards_build,
         Error(rf"{ANN}:5: bad face count '-1'", r"a count is 0 or more.*" + FIX_ANNOTATION)),
    case("ann-negative-width-kept-as-degenerate", edited("10 10 20 20", "10 10 -2 20"), shards_build, Accepted()),
    case("ann-float-12.5", edited("10 10 20 20", "10 10 12.5 20"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: '12\.5' is not a whole number", FIX_ANNOTATION)),
    case("ann-float-12.0-is-integral", edited("10 10 20 20", "10 10 12.0 20"), shards_build, Accepted()),
    case("ann-nan", edited("10 10 20 20", "10 10 nan 20"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: not integers: '10 10 nan 20", FIX_ANNOTATION)),
    case("ann-inf", edited("10 10 20 20", "10 10 inf 20"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: not integers: '10 10 inf 20", FIX_ANNOTATION)),
    case("ann-float-count", edited("0_Parade_a.jpg\n1\n", "0_Parade_a.jpg\n1.5\n"), shards_build,
         Error(rf"{ANN}:2: face count: '1\.5' is not a whole number", FIX_ANNOTATION)),
    case("ann-9-columns", edited("10 10 20 20 0 0 0 0 0 0", "10 10 20 20 0 0 0 0 0"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: expected 10 integers, got 9", FIX_ANNOTATION)),
    case("ann-11-columns", edited("10 10 20 20 0 0 0 0 0 0", "10 10 20 20 0 0 0 0 0 0 7"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: expected 10 integers, got 11", FIX_ANNOTATION)),
    case("ann-letters-in-a-face-line", edited("10 10 20 20", "10 10 twenty 20"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: not integers", FIX_ANNOTATION)),
    case("ann-count-0-with-a-box", edited("0_Parade_b.jpg\n0\n0 0 0 0", "0_Parade_b.jpg\n0\n3 3 9 9"), shards_build,
         Error(rf"{ANN}:6: 0--Parade/0_Parade_b\.jpg: count 0 but a non-zero box line", FIX_ANNOTATION)),
    case("ann-latin-1-bytes", annotation(GOOD.replace("0_Parade_b", "0_Parade_caf\xe9").encode("latin-1")),
         shards_build,
         Error(rf"{ANN}:4: byte 0xe9 is not UTF-8 text", r"save the file as UTF-8.*" + FIX_ANNOTATION)),
    case("ann-utf8-byte-order-mark", annotation("\ufeff" + GOOD), shards_build, Accepted()),
    case("ann-crlf-line-ends", annotation(GOOD.replace("\n", "\r\n")), shards_build, Accepted()),
    case("ann-blank-lines-between-records",
         annotation("\n" + GOOD.replace("0--Parade/0_Parade_b", "\n\n0--Parade/0_Parade_b") + "\n\n"), shards_build,
         Accepted()),
    case("ann-blank-line-inside-a-record", edited("0_Parade_a.jpg\n1\n", "0_Parade_a.jpg\n1\n\n"), shards_build,
         Error(rf"{ANN}:3: face 1 of 0--Parade/0_Parade_a\.jpg: expected 10 integers, got 0", FIX_ANNOTATION)),
    case("ann-image-missing", annotation(GOOD + "0--Parade/0_Parade_gone.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n"), shards_build,
         Error(rf"{ANN}:11: image 0--Parade/0_Parade_gone\.jpg is not in .*WIDER_train/images",
               r"restore the images, or remove their records")),
    case("ann-duplicate-image", annotation(GOOD + "0--Parade/0_Parade_a.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n"), shards_build,
         Error(rf"{ANN}:11: 0--Parade/0_Parade_a\.jpg has a second record \(the first is at line 1\)",
               r"merge them into one")),
    case("ann-path-with-dotdot", edited("0--Parade/0_Parade_b.jpg", "../../0_Parade_b.jpg"), shards_build,
         Error(rf"{ANN}:4: expected an image path '<event>/<image>\.jpg', got '\.\./\.\./0_Parade_b\.jpg'",
               FIX_ANNOTATION)),
    case("ann-path-not-jpg", edited("0--Parade/0_Parade_b.jpg", "0--Parade/0_Parade_b.png"), shards_build,
         Error(rf"{ANN}:4: expected an image path", FIX_ANNOTATION)),
    case("ann-empty-file", annotation(""), shards_build, Error(rf"{ANN}:1: no image records", FIX_ANNOTATION)),
    case("ann-file-missing", without(ANNOTATION), shards_build,
         Error(r"annotation file for split 'train' not found: .*wider_face_train_bbx_gt\.txt",
               r"--wider-root must hold the WIDER FACE layout")),
    case("ann-test-list-duplicate", filelist("0--Parade/a.jpg\n\n0--Parade/a.jpg\n"), layout_records("test"),
         Error(r"wider_face_test_filelist\.txt:3: 0--Parade/a\.jpg is listed again", r"first at line 1")),
    case("ann-test-list-dotdot", filelist("0--Parade/a.jpg\n../b.jpg\n"), layout_records("test"),
         Error(r"wider_face_test_filelist\.txt:2: expected '<event>/<image>\.jpg', got '\.\./b\.jpg'",
               r"<event>/<image>")),

    # ---- images, through `isrn shards build` (then the loader, when accepted)
    case("img-zero-bytes", with_image("zero-bytes"), shards_build,
         Error(rf"{SUBJECT}\.jpg \({ANN}:11\): corrupt JPEG: the image is empty", FIX_IMAGE)),
    case("img-truncated-jpeg", with_image("truncated"), shards_build,
         Error(rf"{SUBJECT}\.jpg \(.*:11\): corrupt JPEG: OpenCV cannot decode it", FIX_IMAGE)),
    case("img-not-an-image", with_image("text"), shards_build,
         Error(rf"{SUBJECT}\.jpg \(.*:11\): corrupt JPEG: no image header", FIX_IMAGE)),
    case("img-bomb-30000x30000", with_image("bomb-30000"), shards_build,
         Error(rf"{SUBJECT}\.jpg \(.*:11\): the image header declares more pixels than 67108864 .*900000000 pixels",
               FIX_IMAGE)),
    case("img-bomb-9000x9000", with_image("bomb-9000"), shards_build,
         Error(rf"{SUBJECT}\.jpg \(.*:11\): the image header declares 9000 × 9000 pixels, more than the limit",
               FIX_IMAGE)),
    case("img-png-under-a-jpg-name", with_image("png-as-jpg"), shards_build, Accepted()),
    case("img-cmyk-jpeg", with_image("cmyk"), shards_build, Accepted()),
    case("img-grayscale-jpeg", with_image("grayscale"), shards_build, Accepted()),
    case("img-16-bit-png", with_image("png-16-bit"), shards_build, Accepted()),
    case("img-png-with-alpha", with_image("png-alpha"), shards_build, Accepted()),
    case("img-exif-rotation-not-applied", with_image("exif-rotated"), shards_build, Accepted()),

    # ---- COCO-format annotation files, through `isrn shards build --coco` (then the loader, when accepted)
    case("coco-accepted-face-boxes", coco(), coco_build("face"), Accepted()),
    case("coco-accepted-person-boxes-of-instances-json", coco(without_face_boxes), coco_build("person"), Accepted()),
    case("coco-not-json", coco(text="{\n"), coco_build(),
         Error(r"coco/ann\.json: not JSON \(line 2, column 1", r"give a COCO JSON annotation file.*" + FIX_ANNOTATION)),
    case("coco-a-wider-annotation-file", coco(text=GOOD), coco_build(),
         Error(r"ann\.json: not JSON \(line 1, column 2: Extra data", r"give a COCO JSON annotation file")),
    case("coco-a-json-list", coco(text="[]"), coco_build(),
         Error(r"ann\.json: not a COCO annotation file: no 'images' or 'annotations' or 'categories' list \(it is "
               r"a JSON list\)", r"give a COCO JSON annotation file")),
    case("coco-no-person-category", coco(lambda d: d.__setitem__("categories", [{"id": 1, "name": "face"}])),
         coco_build(), Error(r"ann\.json: no category named 'person' \(categories: face\)", r"give COCO's instances")),
    case("coco-image-id-not-in-images", coco(annotation_field(2, "image_id", 99)), coco_build(),
         Error(r"ann\.json: annotation 3 names image_id 99, which is not in `images`",
               r"fix its image_id, or remove the annotation")),
    case("coco-image-file-missing", coco(image_field(0, "file_name", "0--Parade/0_Parade_gone.jpg")), coco_build(),
         Error(r"ann\.json: image id 1: 0--Parade/0_Parade_gone\.jpg is not in .*WIDER_train/images",
               r"restore the files, or remove their entries from `images`")),
    case("coco-file-name-outside-the-folder", coco(image_field(0, "file_name", "../../0_Parade_a.jpg")), coco_build(),
         Error(r"ann\.json: image id 1: file_name '\.\./\.\./0_Parade_a\.jpg' is not a relative path inside",
               r"fix the entry's file_name")),
    case("coco-image-listed-twice", coco(image_field(1, "id", 1)), coco_build(),
         Error(r"ann\.json: image id 1 is listed twice \(images\[1\]\)", r"give each image one entry")),
    case("coco-box-outside-its-image", coco(annotation_field(0, "face_box", [100, 10, 20, 20])), coco_build(),
         Error(r"ann\.json: annotation 1 \(image 0--Parade/0_Parade_a\.jpg\): its box \[100\.0, 10\.0, 20\.0, 20\.0\] "
               r"lies outside the 64 × 48 image", r"fix its box or its image_id .*or remove the annotation")),
    case("coco-box-past-the-border-is-clipped", coco(annotation_field(0, "face_box", [50.4, 10, 20, 20])),
         coco_build(), Accepted()),
    case("coco-nan", coco(annotation_field(0, "face_box", [10, 10, float("nan"), 20])), coco_build(),
         Error(r"annotation 1 \(image 0--Parade/0_Parade_a\.jpg\): face_box \[10, 10, nan, 20\] holds a non-finite "
               r"number", r"fix or remove the annotation in the annotation file")),
    case("coco-infinity", coco(annotation_field(0, "bbox", [10, 10, float("inf"), 20])), coco_build("person"),
         Error(r"annotation 1 .*: bbox \[10, 10, inf, 20\] holds a non-finite number", r"fix or remove the annotation")),
    case("coco-box-not-four-numbers", coco(annotation_field(0, "face_box", "10 10 20 20")), coco_build(),
         Error(r"annotation 1 .*: face_box must be 4 numbers \[x, y, w, h\], got '10 10 20 20'",
               r"fix or remove the annotation")),
    case("coco-face-boxes-from-instances-json", coco(without_face_boxes), coco_build("face"),
         Error(r"annotation 1 .*: no face_box: --boxes face needs COCO-WholeBody annotations",
               r"use --boxes person for COCO's own")),
    case("coco-crowd-and-unclear-faces-accepted", coco(lambda d: (annotation_field(0, "iscrowd", 1)(d),
                                                                  annotation_field(1, "face_valid", False)(d))),
         coco_build(), Accepted()),
    case("coco-no-face-box-is-no-face", coco(annotation_field(0, "face_box", [0, 0, 0, 0]),
                                             wanted=("1--Handshaking/1_Handshaking_c",)), coco_build(), Accepted()),
    case("coco-no-image-with-a-box", coco(lambda d: d.__setitem__("annotations", [])), coco_build(),
         Error(r"ann\.json: no image has a face box: nothing to shard", r"COCO-WholeBody's face_box")),
    case("coco-image-does-not-decode", coco(image="text"), coco_build(),
         Error(rf"{SUBJECT}\.jpg \(ann\.json: image id 4\): corrupt JPEG: no image header", FIX_IMAGE)),
    case("coco-image-truncated", coco(image="truncated"), coco_build(),
         Error(rf"{SUBJECT}\.jpg \(ann\.json: image id 4\): corrupt JPEG: OpenCV cannot decode it", FIX_IMAGE)),
    case("coco-image-size-differs-from-its-entry", coco(image_field(0, "width", 128)), coco_build(),
         Error(r"0_Parade_a\.jpg \(ann\.json: image id 1\): the file is 64 × 48 pixels but the annotation says "
               r"128 × 48", r"restore the original image, or fix its width and height in the annotation file")),
    case("coco-png-under-a-jpg-name", coco(image="png-as-jpg"), coco_build(), Accepted()),
    case("coco-test-split", coco(), coco_build("face", "test"),
         Error(r"--coco builds train or val splits", r"COCO's test images carry no annotations")),
    case("coco-without-images-folder", coco(), lambda row, given: isrn(
        "shards", "build", "--coco", given.annotations, "--split", "train", "--out", row.published),
         Error(r"--coco needs --images DIR", r"the folder holding the split's images")),

    # ---- images in shards the writer never saw, through the loader
    case("load-zero-bytes", shards(sample(LOADED_SUBJECT, b"")), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*train-000000\.tar: corrupt JPEG: the image is empty")),
    case("load-truncated-jpeg", shards(sample(LOADED_SUBJECT, IMAGES["truncated"]())), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: corrupt JPEG: OpenCV cannot decode it")),
    case("load-not-an-image", shards(sample(LOADED_SUBJECT, IMAGES["text"]())), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: corrupt JPEG: no image header")),
    case("load-bomb-declared-by-its-json", shards(sample(LOADED_SUBJECT, IMAGES["bomb-30000"](), width=30000,
                                                          height=30000), never_decode=(IMAGES["bomb-30000"](),)), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: its JSON declares 30000 × 30000 pixels, more than the limit")),
    case("load-bomb-behind-a-lying-json", shards(sample(LOADED_SUBJECT, IMAGES["bomb-9000"]()),
                                                 never_decode=(IMAGES["bomb-9000"](),)), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: the image header declares 9000 × 9000 pixels")),
    case("load-exif-rotation-not-applied", shards(sample(LOADED_SUBJECT, IMAGES["exif-rotated"]()),
                                                  wanted=("9--Good/9_Good_0", LOADED_SUBJECT, "9--Good/9_Good_1")),
         load, Accepted()),

    # ---- tars, through the loader on local shards
    # webdataset reports a cut tar twice (the member, then the stream): two counted, logged skips
    case("tar-truncated", truncated_shards, load, Skip(2, r"unexpected end of data .*train-000000\.tar")),
    case("tar-json-without-its-jpg", shards(sample(LOADED_SUBJECT)[1]), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*train-000000\.tar: no \.jpg member")),
    case("tar-jpg-without-its-json", shards(sample(LOADED_SUBJECT)[0]), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*train-000000\.tar: no \.json member")),
    # each repeated member is one skip; webdataset's message names the member, not the shard
    case("tar-duplicate-key", shards(good(0)), load,
         Skip(2, r"9--Good/9_Good_0\.(jpg|json): duplicate file name in tar file")),
    case("tar-symlink-member-never-followed",
         shards(Member("3--Riot/3_Riot_x.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                                                     sample(LOADED_SUBJECT)[1]), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: no \.jpg member")),
    case("tar-hardlink-member",
         shards(Member("3--Riot/3_Riot_x.jpg", kind=tarfile.LNKTYPE, link="9--Good/9_Good_0.jpg"),
                                       sample(LOADED_SUBJECT)[1]), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: no \.jpg member")),
    case("tar-device-member", shards(Member("3--Riot/3_Riot_x.jpg", kind=tarfile.CHRTYPE),
                                     sample(LOADED_SUBJECT)[1]), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: no \.jpg member")),
    case("tar-directory-member", shards(Member("3--Riot", kind=tarfile.DIRTYPE)), load, Accepted()),
    case("tar-member-without-extension", shards(Member("README", b"notes")), load, Accepted()),
    # read in memory, never extracted: nothing appears under the working directory's `../..`
    case("tar-dotdot-path-read-never-extracted", shards(sample("../../evil/3_Riot_x"), wanted=WITH_EVIL), load,
         Accepted()),
    case("tar-absolute-path-read-never-extracted", shards(sample("/tmp/evil/3_Riot_x"), wanted=WITH_EVIL), load,
         Accepted()),
    case("tar-undecodable-json", shards(sample(LOADED_SUBJECT, meta=b'{"faces": [')), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: undecodable JSON")),
    case("tar-json-without-faces", shards(sample(LOADED_SUBJECT, meta=b'{"width": 64}')), load,
         Skip(1, r"3--Riot/3_Riot_x in shard .*: undecodable JSON \('faces'\)")),
    case("tar-not-a-tar", bad_shard_then_good(b"PK\x03\x04 a zip file, not a tar" * 40), load,
         Skip(1, r"train-000000\.tar")),
    case("tar-zero-bytes", bad_shard_then_good(b""), load, Skip(1, r"train-000000\.tar")),

    # ---- manifests, through the loader (the published train split, edited)
    case("man-missing", removed(f"published/train/{MANIFEST_NAME}"), load,
         Error(r"no shard manifest at .*published/train/manifest\.json",
               r"`isrn shards build --wider-root DIR --split train --out .*published`")),
    case("man-folder-missing", lambda row: Shards(row.root / "nowhere" / "train" / MANIFEST_NAME, ()), load,
         Error(r"local shard folder '.*nowhere/train' does not exist",
               r"build the shards there with `isrn shards build")),
    case("man-wrong-size", published_manifest(lambda m: m["shards"][0].__setitem__("bytes", 99)), load,
         Error(r"train/manifest\.json: the shards do not match their manifest \(v-\w+/train-000000\.tar: \d+ bytes, "
               r"the manifest says 99", r"rebuild the split with `isrn shards build`")),
    case("man-shard-missing", published_manifest(shard=Path.unlink), load,
         Error(r"train-000000\.tar: missing", r"rebuild the split with `isrn shards build` \(it resumes\) or restore")),
    case("man-wrong-sha256-verified", published_manifest(shard=flip_a_byte), lambda row, s: load(row, s, verify=True),
         Error(r"train-000000\.tar: \d+ bytes sha256 \w+…, manifest says",
               r"rebuild the split with `isrn shards build`")),
    case("man-unknown-format-version", published_manifest(set_("format", "isrn-wider-shards/9")), load,
         Error(r"manifest\.json: not a valid shard manifest \(format 'isrn-wider-shards/9', this isrn reads "
               r"'isrn-wider-shards/1'\)", FIX_REBUILD + r" \(or read it with the isrn version that wrote it\)")),
    case("man-not-json", published_manifest(text="<?xml version='1.0'?>"), load,
         Error(r"train/manifest\.json: not a valid shard manifest \(Expecting value", FIX_REBUILD)),
    case("man-half-written", published_manifest(text='{"format": "isrn-wider-shards/1", "shards": [{"na'), load,
         Error(r"train/manifest\.json: not a valid shard manifest \(Unterminated string", FIX_REBUILD)),
    case("man-a-json-list", published_manifest(text="[]"), load,
         Error(r"train/manifest\.json: not a valid shard manifest \(a JSON list, not an object\)", FIX_REBUILD)),
    case("man-field-missing", published_manifest(lambda m: m.pop("shards")), load,
         Error(r"train/manifest\.json: not a valid shard manifest \(field 'shards' is missing\)", FIX_REBUILD)),
    case("man-no-shards", published_manifest(set_("shards", [])), load,
         Error(r"train/manifest\.json: not a valid shard manifest \(it lists no shards\)", FIX_REBUILD)),
    case("man-shard-outside-its-folder",
         published_manifest(lambda m: m["shards"][0].__setitem__("name", "../../x.tar")),
         load, Error(r"not a valid shard manifest \('\.\./\.\./x\.tar' is not a file in the manifest's folder\)",
                     FIX_REBUILD)),
    case("man-inspect-not-json", published_manifest(text="not json"), inspect,
         Error(r"train/manifest\.json: not a valid shard manifest", FIX_REBUILD)),

    # ---- the official .mat ground truth, through `isrn evaluate`
    case("mat-file-missing", ground_truth(lambda gt: (gt / HARD_MAT).unlink()), evaluate,
         Error(r"ground truth file .*gt/wider_hard_val\.mat not found",
               r"--ground-truth must be the folder holding wider_face_val\.mat and "
               r"wider_\{easy,medium,hard\}_val\.mat")),
    case("mat-folder-missing", lambda row: (row.root / "pred-none", row.root / "no-gt"), evaluate,
         Error(r"no-gt/wider_face_val\.mat not found", r"--ground-truth must be the folder")),
    case("mat-variable-missing", ground_truth(mat_edit(MAIN_MAT, lambda m: m.pop("face_bbx_list"))), evaluate,
         Error(r"wider_face_val\.mat: missing variable\(s\) face_bbx_list", FIX_OFFICIAL)),
    case("mat-gt-list-missing", ground_truth(mat_edit(HARD_MAT, lambda m: m.pop("gt_list"))), evaluate,
         Error(r"wider_hard_val\.mat: missing variable\(s\) gt_list", FIX_OFFICIAL)),
    case("mat-boxes-of-5-columns", ground_truth(boxes_of(1, np.zeros((3, 5), np.int32))), evaluate,
         Error(r"wider_face_val\.mat: face_bbx_list of 0--Parade/0_Parade_b must be \[N, 4\] \(x, y, w, h\), got shape "
               r"\(3, 5\)", FIX_OFFICIAL)),
    case("mat-boxes-of-12-values-as-4x3", ground_truth(boxes_of(1, np.zeros((4, 3), np.int32))), evaluate,
         Error(r"face_bbx_list of 0--Parade/0_Parade_b must be \[N, 4\].*got shape \(4, 3\)", FIX_OFFICIAL)),
    case("mat-fractional-boxes", ground_truth(boxes_of(0, np.array([[10.5, 10, 20, 20]]))), evaluate,
         Error(r"gt: boxes of image 0 \(0--Parade/0_Parade_a\) must be whole pixels", FIX_OFFICIAL)),
    case("mat-index-out-of-range", ground_truth(hard_faces_of(0, np.array([[5.0]]))), evaluate,
         Error(r"gt: keep\['hard'\] of image 0 \(0--Parade/0_Parade_a\) has index 4 outside 0\.\.0", FIX_OFFICIAL)),
    case("mat-not-a-mat-file", ground_truth(lambda gt: (gt / "wider_easy_val.mat").write_bytes(b"%PDF-1.4\n" * 30)),
         evaluate, Error(r"wider_easy_val\.mat: not a readable MATLAB file", FIX_OFFICIAL)),
    case("mat-setting-file-of-other-events", ground_truth(hard_event_named("9--Press_Conference")), evaluate,
         Error(r"wider_hard_val\.mat lists other images \(or another order\) than .*wider_face_val\.mat",
               r"the four files must come from one release")),
    case("mat-events-disagree-with-the-images", ground_truth(predicted_event="0_Parade"), evaluate,
         Error(r"none of the 2 prediction files in .*pred names an image of the ground truth in .*gt \(e\.g\. "
               r"0_Parade/0_Parade_a\.txt, where the ground truth has 0--Parade/0_Parade_a\)",
               r"give --ground-truth of the split the predictions were made on")),

    # ---- job specs, through `isrn train SPEC --dry-run` (nothing starts)
    case("spec-unknown-key", nothing, train_dry_run("train.epoch=3"),
         Error(r"smoke\.yaml: train\.epoch: unknown key", r"`isrn train SPEC --explain` lists every field")),
    case("spec-wrong-type", nothing, train_dry_run("scaling.num_workers=two"),
         Error(r"smoke\.yaml: scaling\.num_workers:", r"Input should be a valid integer")),
    case("spec-negative-lr", nothing, train_dry_run("optim.lr=-0.01"),
         Error(r"smoke\.yaml: optim\.lr:", r"Input should be greater than 0")),
    case("spec-zero-workers", nothing, train_dry_run("scaling.num_workers=0"),
         Error(r"smoke\.yaml: scaling\.num_workers:", r"Input should be greater than 0")),
    case("spec-choice-not-offered", nothing, train_dry_run("optim.name=rmsprop"),
         Error(r"smoke\.yaml: optim\.name:", r"Input should be 'sgd' or 'adamw'")),
    case("spec-bn-with-batch-1", nothing, train_dry_run("model.norm=bn", "loader.batch_size=1"),
         Error(r"model\.norm=bn needs loader\.batch_size >= 2 per worker", r"use gn or frozen_bn")),
    case("spec-shards-url-without-bucket", nothing, train_dry_run("data.shards=s3:///wider"),
         Error(r"data\.shards: 's3:///wider' names no bucket", r"write s3://BUCKET/prefix")),
    case("spec-checkpoints-url-without-bucket", nothing, train_dry_run("checkpoint.storage=s3:/runs"),
         Error(r"checkpoint\.storage: 's3:/runs' names no bucket", r"write s3://BUCKET/prefix")),
    case("spec-init-from-without-bucket", nothing, train_dry_run("model.init_from=s3://"),
         Error(r"model: init_from 's3://' names no bucket", r"write s3://BUCKET/prefix")),
    case("spec-invalid-yaml", spec_file("name: x\ndata:\n  shards: [unclosed\n"), train_dry_run(),
         Error(r"job\.yaml: not valid YAML: .*line \d+, column \d+", r"fix the line shown")),
    case("spec-not-a-mapping", spec_file("- name: x\n"), train_dry_run(),
         Error(r"job\.yaml: expected a mapping of sections at the top level", r"\(name: …, data: …\), got list")),
    case("spec-set-without-equals", nothing, train_dry_run("optim.lr"),
         Error(r"--set 'optim\.lr'", r"expected FIELD=VALUE, e\.g\. optim\.lr=0\.02")),
    case("spec-set-below-a-value", nothing, train_dry_run("optim.lr.peak=0.1"),
         Error(r"--set optim\.lr\.peak: 'lr' is a value, not a section", r"--set optim\.lr=VALUE")),
    case("spec-unknown-name", nothing, lambda row, _: isrn("train", "no-such-spec", "--dry-run"),
         Error(r"spec 'no-such-spec' not found", r"give a YAML path or one of: .*smoke")),
    case("spec-variable-unset", spec_file("name: x\ndata: {shards: 's3://${ISRN_CORPUS_UNSET}/x'}\n"), train_dry_run(),
         Error(r"job\.yaml: data\.shards: \$\{ISRN_CORPUS_UNSET\} is not set",
               r"export ISRN_CORPUS_UNSET, or write \$\{ISRN_CORPUS_UNSET:-DEFAULT\}")),
    # A credential in a spec would be printed by --dry-run and logged to MLflow: refused by name, set or not.
    case("spec-variable-credential", spec_file("name: x\ndata: {shards: 's3://b/${AWS_SECRET_ACCESS_KEY}'}\n"),
         train_dry_run(), Error(r"data\.shards: \$\{AWS_SECRET_ACCESS_KEY\} names a credential, which a spec may "
                                r"not read", r"write the value the field needs instead")),
    case("spec-variable-token-with-default", spec_file("name: x\ntracking: {experiment: '${MLFLOW_TRACKING_TOKEN:-t}'}\n"),
         train_dry_run(), Error(r"tracking\.experiment: \$\{MLFLOW_TRACKING_TOKEN\} names a credential",
                                r"read it from their own environment")),
    case("run-name-not-a-folder-name", nothing, lambda row, _: isrn("train", "smoke", "--run-name", "a/b", "--dry-run"),
         Error(r"--run-name 'a/b': a run name is 1 to 128 letters", r"starting with a letter or digit")),
    case("resume-and-run-name-differ", nothing,
         lambda row, _: isrn("train", "smoke", "--resume", "a", "--run-name", "b", "--dry-run"),
         Error(r"--resume a and --run-name b name two runs", r"give one")),
    case("fault-plan-unknown-point", nothing,
         api(lambda row: faults.plan_from_env({faults.PLAN_VARIABLE: '[{"point": "step_ends", "step": 3}]'}),
             ValueError),
         Error(r"ISRN_FAULT_PLAN: .*unknown fault point 'step_ends'", r"point one of checkpoint_uploaded, step_end")),

    # ---- job preparation (before any worker starts), on the published splits
    case("prep-batch-the-split-cannot-fill", nothing, read_fingerprints("loader.batch_size=2", "scaling.num_workers=2"),
         Error(r"loader\.batch_size × scaling\.num_workers × train\.grad_accum_steps = 2 × 2 × 1 = 4 images per "
               r"optimiser step, but the train split at .*published/train/manifest\.json holds 3",
               r"lower them, or use a larger train split")),
    case("prep-accumulation-the-split-cannot-fill", nothing,
         read_fingerprints("loader.batch_size=1", "scaling.num_workers=2", "train.grad_accum_steps=2"),
         Error(r"= 1 × 2 × 2 = 4 images per optimiser step", r"lower them")),
    case("prep-batch-that-fills-the-split", nothing, read_fingerprints("loader.batch_size=1", "scaling.num_workers=3"),
         Accepted()),
    case("prep-val-manifest-missing", removed(f"published/val/{MANIFEST_NAME}"),
         read_fingerprints("loader.batch_size=1"),
         Error(r"data\.shards: no val shard manifest at .*published/val/manifest\.json",
               r"build it with `isrn shards build --wider-root DIR --split val --out")),
    case("prep-manifest-not-json", published_manifest(text="{"), read_fingerprints("loader.batch_size=1"),
         Error(r"data\.shards: .*train/manifest\.json: not a valid shard manifest", FIX_REBUILD)),
    case("prep-local-checkpoints-on-two-nodes", nothing, checkpoint_storage("/data/ckpt", [node(0), node(4), node(4)]),
         Error(r"checkpoint\.storage: '/data/ckpt' is a local path, but the cluster has 2 nodes that run workers",
               r"give checkpoint\.storage an s3://BUCKET/prefix every node can reach")),
    case("prep-local-checkpoints-on-gpu-nodes", nothing,
         checkpoint_storage("ckpt", [node(0, gpus=1), node(0, gpus=1)]),
         Error(r"checkpoint\.storage: 'ckpt'", r"s3://")),
    case("prep-local-checkpoints-on-one-node", nothing,
         checkpoint_storage("/data/ckpt", [node(0), node(4), node(4, alive=False)]), Accepted()),

    # ---- credentials and services (dead loopback ports; the session's SeaweedFS for `integration` rows)
    case("cred-missing-no-chain", s3_variables(access_key=None, secret_key=None),
         shards_build_to("s3://isrn-shards/corpus"),
         Error(r"cannot use 's3://isrn-shards/corpus': no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
               r"are unset and the AWS credential chain found none", r"run `isrn platform up`")),
    case("cred-only-the-access-key", s3_variables(secret_key=None), shards_build_to("s3://isrn-shards/corpus"),
         Error(r"AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not", r"set both, or neither")),
    case("cred-only-the-secret-key", s3_variables(access_key=None), shards_build_to("s3://isrn-shards/corpus"),
         Error(r"AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not", r"set both, or neither")),
    case("s3-endpoint-refuses", s3_variables(), shards_build_to("s3://isrn-shards/corpus"),
         Error(rf"cannot reach S3 endpoint http://127\.0\.0\.1:{DEAD_PORT} \(AWS_ENDPOINT_URL\)",
               r"start the local platform \(`isrn platform up`\) or set AWS_ENDPOINT_URL")),
    case("s3-url-without-bucket", s3_variables(), shards_build_to("s3:///corpus"),
         Error(r"'s3:///corpus' names no bucket", r"write s3://BUCKET/prefix")),
    case("cred-wrong-secret", s3_variables(secret_key="not-the-secret", endpoint="live"), shards_build_to_s3,
         Error(r"S3 at http://127\.0\.0\.1:\d+ refused the credentials of AWS_ACCESS_KEY_ID=", r"set AWS_ACCESS_KEY_ID "
               r"and AWS_SECRET_ACCESS_KEY to a pair this store accepts"), integration=True),
    case("s3-bucket-missing", s3_variables(endpoint="live"), lambda row, _: shards_build_to_s3(
        dataclasses.replace(row, bucket=None), _),
         Error(r"bucket 'isrn-no-such-bucket' does not exist at http://127\.0\.0\.1:\d+",
               r"create it \(`aws s3 mb s3://isrn-no-such-bucket`\) or fix the URL"), integration=True),
    case("prep-bucket-missing", s3_variables(endpoint="live"),
         check_storage_of("data.shards=s3://isrn-no-such-bucket/x", "data.synth=null"),
         Error(r"data\.shards / checkpoint\.storage: bucket 'isrn-no-such-bucket' does not exist", r"create it"),
         integration=True),
    case("prep-wrong-credentials-before-generating", s3_variables(secret_key="not-the-secret", endpoint="live"),
         prepare_with_synth,
         Error(r"data\.shards / checkpoint\.storage: .*refused the credentials", r"set AWS_ACCESS_KEY_ID"),
         integration=True),
    case("mlflow-does-not-answer", nothing, api(quickly(lambda row: preflight.check_tracking_server(
        dead_url()), 10), ServiceUnavailableError),
         Error(rf"the MLflow server at http://127\.0\.0\.1:{DEAD_PORT} \(MLFLOW_TRACKING_URI\) "
               r"does not answer",
               r"start the local platform \(`isrn platform up`\) or set MLFLOW_TRACKING_URI")),
    case("ray-does-not-answer", nothing, api(quickly(lambda row: preflight.connect_ray(
        job_env(ray_address=f"127.0.0.1:{DEAD_PORT}")), 10), ServiceUnavailableError),
         Error(rf"no Ray cluster answers at 127\.0\.0\.1:{DEAD_PORT} \(RAY_ADDRESS\)",
               r"start the local platform \(`isrn platform up`\) or set RAY_ADDRESS to the head's HOST:6379")),
    case("ray-client-address-does-not-answer", nothing, api(quickly(lambda row: preflight.connect_ray(
        job_env(ray_address=f"ray://127.0.0.1:{DEAD_PORT}")), 10), ServiceUnavailableError),
         Error(rf"no Ray cluster answers at ray://127\.0\.0\.1:{DEAD_PORT}", r"set RAY_ADDRESS")),
    case("submit-address-unreachable", nothing,
         lambda row, _: isrn("submit", "smoke", "--address", dead_url(), "--no-wait"),
         Error(rf"cannot reach the Ray Jobs API at http://127\.0\.0\.1:{DEAD_PORT}",
               r"start the local platform \(`isrn platform up`\), or give --address")),
    case("jobs-list-address-unreachable", nothing, lambda row, _: isrn("jobs", "list", "--address", dead_url()),
         Error(rf"cannot reach the Ray Jobs API at http://127\.0\.0\.1:{DEAD_PORT}", r"or give --address")),
]


# ---------------------------------------------------------------- nothing published or lost


def files(root: Path) -> dict[str, str]:
    """Every file under `root` (relative POSIX path -> sha256)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def complete_tar(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        return False
    return True


def bucket_objects(row: Row) -> dict[str, str]:
    client = row.s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=row.bucket)
    return {obj["Key"]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}


def sound_manifests(row: Row) -> list[Path]:
    """The published manifests whose shards are all there, with their sizes and sha256."""
    sound = []
    for manifest in sorted(row.published.glob(f"*/{MANIFEST_NAME}")):
        try:
            check_shards(str(manifest), read_manifest(str(manifest)), verify=True)
        except (ValueError, FileNotFoundError):
            continue
        sound.append(manifest)
    return sound


def published_or_lost(row: Row, before: dict[str, str], after: dict[str, str], sound: list[Path],
                      accepted: bool) -> list[str]:
    """What the row published without succeeding, lost, or left half-written; [] when nothing.

    `before`/`after`: the row's files around the act; `sound`: the manifests that verified before it."""
    problems = []
    for name, digest in before.items():
        replaced = accepted and name.startswith("published/") and name.endswith(MANIFEST_NAME)
        if after.get(name) != digest and not replaced:
            problems.append(f"{name}: {'changed' if name in after else 'lost'}")
    for name in sorted(after.keys() - before.keys()):
        if ".tmp-" in name:
            problems.append(f"{name}: half-written file left behind")
        elif name.endswith(MANIFEST_NAME):
            problems.append(f"{name}: a manifest published by a run that did not succeed")
        elif not (name.startswith("published/") and name.endswith(".tar") and complete_tar(row.root / name)):
            problems.append(f"{name}: written by a reader, or an incomplete shard")
    lost = set(sound) - set(sound_manifests(row))  # a sound split still verifies (replaced ones too)
    problems += [f"{m.relative_to(row.root)}: no longer verifies" for m in sorted(lost)]
    return problems


# ---------------------------------------------------------------- the test


class CorpusTable:
    """Counts the rows by outcome and prints them in pytest's closing summary."""

    LABELS = ("cases tried", "clear errors", "counted skips", "accepted", "published-or-lost")

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_sep("-", "bad-input corpus (tests/test_bad_input.py)")
        for label in self.LABELS:
            terminalreporter.write_line(f"{label:18} {self.counts[label]:4d}")


TABLE = CorpusTable()


@pytest.fixture(scope="module", autouse=True)
def _corpus_table(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.is_registered(TABLE):
        request.config.pluginmanager.register(TABLE, "isrn-bad-input-corpus")


@pytest.fixture
def row(template, tmp_path, caplog, monkeypatch) -> Row:
    """The row's folder (`published/`, `wider/` copied from the template; also the working directory)
    and an environment with no service, key or credential file of the machine's."""
    root = tmp_path / "row"
    shutil.copytree(template / "published", root / "published")
    shutil.copytree(template / "wider", root / "wider")
    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_", "RAY_")):
            monkeypatch.delenv(name)
    for name in ("home", "state"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ISRN_STATE_DIR", str(tmp_path / "state"))  # no local platform running
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance credentials either
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "home" / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "home" / "aws-credentials"))
    (root / "cwd" / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(root / "cwd" / "a" / "b")  # where a `../../x` tar member would be extracted: under root
    caplog.set_level(logging.WARNING)
    return Row(root=root, caplog=caplog, monkeypatch=monkeypatch)


@pytest.mark.parametrize("bad", CASES)
def test_bad_input(bad: Case, row: Row, request: pytest.FixtureRequest) -> None:
    if bad.integration:
        row.s3, row.bucket = request.getfixturevalue("local_s3"), request.getfixturevalue("fresh_bucket")
    TABLE.counts["cases tried"] += 1
    given = bad.given(row)
    before, sound, objects_before = files(row.root), sound_manifests(row), bucket_objects(row) if row.bucket else {}
    outcome = bad.when(row, given)
    accepted = outcome.error is None and isinstance(bad.expect, Accepted)
    problems = published_or_lost(row, before, files(row.root), sound, accepted)
    if row.bucket and bucket_objects(row) != objects_before:
        problems.append(f"s3://{row.bucket}: objects written by a run that did not succeed")
    if problems:
        TABLE.counts["published-or-lost"] += 1

    expect = bad.expect
    if isinstance(expect, Error):
        assert outcome.error is not None, f"no error for {bad}"
        assert "Traceback" not in outcome.error, outcome.error
        assert re.search(expect.thing, outcome.error, re.S), f"the message does not name the thing:\n{outcome.error}"
        assert re.search(expect.fix, outcome.error, re.S), f"the message does not say the fix:\n{outcome.error}"
    else:
        assert outcome.error is None, outcome.error
        assert sorted(outcome.keys) == sorted(outcome.wanted), "a good sample did not arrive"
        logged = [r.getMessage() for r in row.caplog.records if r.getMessage().startswith("skipped: ")]
        if isinstance(expect, Skip):
            assert outcome.skipped == expect.count, (outcome.skipped, logged)
            assert len(logged) == expect.count, logged
            assert all(re.search(expect.logged, line) for line in logged), logged
        else:
            assert outcome.skipped == 0 and not logged, logged
    assert not problems, problems
    TABLE.counts[{Error: "clear errors", Skip: "counted skips", Accepted: "accepted"}[type(expect)]] += 1
