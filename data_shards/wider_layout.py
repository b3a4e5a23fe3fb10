"""Reader for the official WIDER FACE layout.

    <root>/WIDER_{train,val,test}/images/<event>/<image>.jpg
    <root>/wider_face_split/wider_face_{train,val}_bbx_gt.txt
    <root>/wider_face_split/wider_face_test_filelist.txt
    <root>/wider_face_split/wider_face_val.mat            (no gt_list)
    <root>/ground_truth/wider_{face,easy,medium,hard}_val.mat   (the evaluation tool's files)

`*_bbx_gt.txt` records are: a path line (`<event>/<image>.jpg`), a count line, then one line per
face `x1 y1 w h blur expression illumination invalid occlusion pose`. Quirks kept exactly:

- a count of 0 is followed by one all-zero line, which is not a face;
- invalid faces and boxes with w or h <= 0 are kept here, with all six attributes; the consumer
  decides (`Face.is_degenerate`, `Face.invalid`);
- a malformed record raises `WiderFormatError` naming the file and the 1-based line; so do a
  second record of the same image and a path that is not `<event>/<image>.jpg` (no `..`);
- CRLF line ends, a UTF-8 byte-order mark, blank lines between records and integral floats
  ("12.0") are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isrn_model.wider_eval.ground_truth import ATTRIBUTES, SETTINGS
from isrn_model.wider_eval.mat_files import mat_file_names

SPLITS = ("train", "val", "test")


class WiderFormatError(ValueError):
    """A malformed annotation record; the message names the file and line."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class Face:
    """One annotated face: box (x, y, w, h) in pixels and the six WIDER attribute codes."""

    x: int
    y: int
    w: int
    h: int
    blur: int = 0
    expression: int = 0
    illumination: int = 0
    invalid: int = 0
    occlusion: int = 0
    pose: int = 0

    @property
    def is_degenerate(self) -> bool:
        """w or h <= 0: such boxes are kept in the record but must not be used for training."""
        return self.w <= 0 or self.h <= 0

    def xywh(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def attributes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


# The settings' height rule (Easy ⊂ Medium ⊂ Hard), in the image's own pixels. Real WIDER FACE defines its
# settings by EdgeBox's detection rate; on the official val ground truth this rule reproduces them
# (F1 of the rule's faces against the official lists: Easy 0.991, Medium 0.990, Hard 0.987; the
# faces' blur, occlusion, pose and illumination labels add nothing), so the generated and COCO sets use
# it. An earlier rule that also required Easy faces to be clear, unoccluded and frontal scored Easy
# 0.568 and Medium 0.781 against the official lists: it made Easy half as large as WIDER's.
EASY_MIN_HEIGHT = 50
MEDIUM_MIN_HEIGHT = 30
HARD_MIN_HEIGHT = 10


def face_settings(face: Face) -> frozenset[str]:
    """The evaluation settings a face counts in: by its height (above); invalid and degenerate faces
    count in none."""
    if face.invalid or face.is_degenerate or face.h < HARD_MIN_HEIGHT:
        return frozenset()
    lowest = {"easy": EASY_MIN_HEIGHT, "medium": MEDIUM_MIN_HEIGHT, "hard": HARD_MIN_HEIGHT}
    return frozenset(setting for setting in SETTINGS if face.h >= lowest[setting])


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: `<event>/<name>.jpg` and its faces in annotation order."""

    path: str
    faces: tuple[Face, ...] = ()
    line: int = field(default=0, compare=False)
    """1-based line of the path in the annotation file (0: not read from one)."""

    @property
    def event(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def name(self) -> str:
        """Image name without `.jpg`: with `event`, the key the WIDER metric uses."""
        return Path(self.path).stem


def _ints(path: Path, lineno: int, text: str, n: int, what: str) -> list[int]:
    fields = text.split()
    if len(fields) != n:
        hint = " (an image path: is the face count above higher than its face lines?)" if _is_image_path(text) else ""
        raise WiderFormatError(path, lineno, f"{what}: expected {n} integers, got {len(fields)}: {text.strip()!r}{hint}")
    values = []
    for field_ in fields:
        try:
            # Some released files carry float-looking values ("12.0"); accept them when integral.
            number = float(field_) if "." in field_ or "e" in field_.lower() else int(field_)
        except ValueError:
            raise WiderFormatError(path, lineno, f"{what}: not integers: {text.strip()!r}") from None
        if isinstance(number, float) and not (number == number and number.is_integer()):
            # 12.5 (or nan) is no pixel count; truncating it to 12 would move a box silently.
            raise WiderFormatError(path, lineno, f"{what}: {field_!r} is not a whole number: {text.strip()!r}")
        values.append(int(number))
    return values


def _is_image_path(text: str) -> bool:
    """`<event>/<image>.jpg`: two non-empty parts, neither `.` nor `..` (the official layout's only form)."""
    parts = text.strip().split("/")
    return (text.strip().lower().endswith(".jpg") and len(parts) == 2
            and all(part not in ("", ".", "..") for part in parts))


def _read_lines(path: Path) -> list[str]:
    """The file's lines as text: UTF-8 (the official files are ASCII), with or without a byte-order mark."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise WiderFormatError(path, line, f"byte 0x{data[error.start]:02x} is not UTF-8 text: save the file as "
                                           "UTF-8 (the official annotation files are plain ASCII)") from None


def parse_bbx_gt(path: str | Path) -> list[ImageRecord]:
    """Parse a `wider_face_{train,val}_bbx_gt.txt` file into records, in file order."""
    path = Path(path)
    lines = _read_lines(path)
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # tolerate blank lines between records and at the end
            i += 1
            continue
        image_path = lines[i].strip()
        if not _is_image_path(image_path):
            hint = (" (a face line: is the face count of the record above lower than its face lines?)"
                    if len(image_path.split()) == len(ATTRIBUTES) + 4 else "")
            raise WiderFormatError(path, i + 1, f"expected an image path '<event>/<image>.jpg', got {image_path!r}{hint}")
        if image_path in first_line:
            raise WiderFormatError(path, i + 1, f"{image_path} has a second record (the first is at line "
                                                f"{first_line[image_path]}): merge them into one")
        first_line[image_path] = i + 1
        if i + 1 >= len(lines):
            raise WiderFormatError(path, i + 2, f"missing face count after {image_path!r}")
        (count,) = _ints(path, i + 2, lines[i + 1], 1, "face count")
        if count < 0:
            raise WiderFormatError(path, i + 2, f"bad face count {lines[i + 1].strip()!r}: a count is 0 or more")
        n_lines = max(count, 1)  # a count of 0 is followed by one all-zero line
        if i + 2 + n_lines > len(lines):
            raise WiderFormatError(
                path, len(lines) + 1, f"{image_path}: expected {n_lines} face line(s), file ended"
            )
        faces = []
        for k in range(n_lines):
            lineno = i + 3 + k
            values = _ints(path, lineno, lines[lineno - 1], 10, f"face {k + 1} of {image_path}")
            if count == 0:
                if any(values[:4]):
                    raise WiderFormatError(path, lineno, f"{image_path}: count 0 but a non-zero box line")
                continue
            faces.append(Face(*values))
        records.append(ImageRecord(image_path, tuple(faces), line=i + 1))
        i += 2 + n_lines
    return records


def format_bbx_gt(records: list[ImageRecord]) -> str:
    """The inverse of `parse_bbx_gt` (used by the generator)."""
    out: list[str] = []
    for rec in records:
        out.append(rec.path)
        out.append(str(len(rec.faces)))
        if not rec.faces:
            out.append("0 0 0 0 0 0 0 0 0 0 ")
        for f in rec.faces:
            out.append(" ".join(str(v) for v in (*f.xywh(), *f.attributes().values())) + " ")
    return "\n".join(out) + "\n"


def read_test_filelist(path: str | Path) -> list[str]:
    """`wider_face_test_filelist.txt`: one `<event>/<image>.jpg` per line."""
    return [record.path for record in _test_records(Path(path))]


def _test_records(path: Path) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        if not _is_image_path(line):
            raise WiderFormatError(path, lineno, f"expected '<event>/<image>.jpg', got {line!r}")
        if line in first_line:
            raise WiderFormatError(path, lineno, f"{line} is listed again (first at line {first_line[line]})")
        first_line[line] = lineno
        records.append(ImageRecord(line, line=lineno))
    return records


class WiderLayout:
    """The files of a WIDER FACE download (or of a generated set) under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def images_dir(self, split: str) -> Path:
        _check_split(split)
        return self.root / f"WIDER_{split}" / "images"

    def annotation_file(self, split: str) -> Path:
        _check_split(split)
        split_dir = self.root / "wider_face_split"
        if split == "test":
            return split_dir / "wider_face_test_filelist.txt"
        return split_dir / f"wider_face_{split}_bbx_gt.txt"

    def records(self, split: str) -> list[ImageRecord]:
        """Records of a split; test images come without faces."""
        path = self.annotation_file(split)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file for split {split!r} not found: {path}")
        if split == "test":
            return _test_records(path)
        return parse_bbx_gt(path)

    def image_path(self, split: str, record: ImageRecord) -> Path:
        return self.images_dir(split) / record.path

    def ground_truth_files(self) -> dict[str, Path]:
        """The val .mat files present: `ground_truth/` (evaluation tool) then `wider_face_split/`."""
        found: dict[str, Path] = {}
        for folder in (self.root / "wider_face_split", self.root / "ground_truth"):
            for name in mat_file_names("val").values():
                if (folder / name).is_file():
                    found[name] = folder / name
        return found


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
