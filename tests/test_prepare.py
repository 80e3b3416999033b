"""Dataset preparation from miniature archives in the official formats."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from piggyback_lab.data import prepare as P
from piggyback_lab.data.prepare import Checksum, Expected, prepare_dataset
from piggyback_lab.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CUB_CLASSES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
CARS_CLASSES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "Audi R8 2012"]


# ----------------------------------------------------------------------------- miniatures


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _tar(folder: Path, archive: Path, arcname: str, mode: str = "w:gz") -> Path:
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname)
    return archive


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (the prepared result, byte for byte)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _empty(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def make_cub(tmp: Path, per_class: int = 4, skip: str | None = None) -> Path:
    """CUB_200_2011.tgz with 3 classes; image k of each class is test when k is odd."""
    base = tmp / "cub_src" / "CUB_200_2011"
    lines = {f: [] for f in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    image_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        for k in range(per_class):
            image_id += 1
            rel = f"{c:03d}.{name}/{name}_{k:04d}_{image_id}.jpg"
            _jpeg(base / "images" / rel, (40, 30), image_id)
            lines["images"].append(f"{image_id} {rel}")
            lines["image_class_labels"].append(f"{image_id} {c}")
            lines["train_test_split"].append(f"{image_id} {1 - k % 2}")
            # box: x, y, w, h floats; the second box runs past the right/bottom edges
            box = "1.5 2.5 10.2 5.0" if k != 1 else "30.4 20.0 15.0 15.0"
            lines["bounding_boxes"].append(f"{image_id} {box}")
    lines["classes"] = [f"{c} {c:03d}.{n}" for c, n in enumerate(CUB_CLASSES, 1)]
    for f, rows in lines.items():
        if f != skip:
            (base / f"{f}.txt").write_text("\n".join(rows) + "\n")
    return _tar(base, tmp / "CUB_200_2011.tgz", "CUB_200_2011")


def _struct(rows: list[dict]) -> np.ndarray:
    arr = np.zeros((1, len(rows)), dtype=[(k, "O") for k in rows[0]])
    for i, r in enumerate(rows):
        arr[0, i] = tuple(r.values())
    return arr


def make_cars(tmp: Path, kaggle: bool = False) -> Path:
    """The three Cars archives + cars_test_annos_withlabels.mat (or the Kaggle nested folders)."""
    src, work = tmp / ("cars_kaggle" if kaggle else "cars_src"), tmp / "cars_work"
    src.mkdir()
    annos = {"train": [], "test": []}
    for split in ("train", "test"):
        for i in range(1, 7):
            cid = (i - 1) % 3 + 1
            fname = f"{i:05d}.jpg"
            sub = f"cars_{split}/cars_{split}" if kaggle else f"cars_{split}"
            _jpeg((src if kaggle else work) / sub / fname, (24, 20), i + 10 * (split == "test"))
            box = {"bbox_x1": 3, "bbox_y1": 4, "bbox_x2": 12, "bbox_y2": 10 if i != 2 else 99}
            annos[split].append({**box, "class": cid, "fname": fname})
    dev = src / "car_devkit" / "devkit" if kaggle else work / "devkit"
    dev.mkdir(parents=True)
    names = np.array([CARS_CLASSES], dtype=object)
    scipy.io.savemat(dev / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(dev / "cars_train_annos.mat", {"annotations": _struct(annos["train"])})
    no_class = [{k: v for k, v in r.items() if k != "class"} for r in annos["test"]]
    scipy.io.savemat(dev / "cars_test_annos.mat", {"annotations": _struct(no_class)})
    scipy.io.savemat(
        src / "cars_test_annos_withlabels.mat", {"annotations": _struct(annos["test"])}
    )
    if not kaggle:
        for name in ("cars_train", "cars_test", "devkit"):
            arch = "car_devkit.tgz" if name == "devkit" else f"{name}.tgz"
            _tar(work / name, src / arch, name)
    return src


FLOWER_LABELS = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]  # image_00001 .. image_00012


def make_flowers(tmp: Path) -> Path:
    """102flowers.tgz (an uncompressed tar, as the real one) + imagelabels.mat + setid.mat."""
    src, work = tmp / "flowers_src", tmp / "flowers_work"
    src.mkdir()
    for i in range(1, len(FLOWER_LABELS) + 1):
        _jpeg(work / "jpg" / f"image_{i:05d}.jpg", (30, 40), i)
    _tar(work / "jpg", src / "102flowers.tgz", "jpg", mode="w")
    labels = np.array([FLOWER_LABELS], dtype=np.uint8)
    scipy.io.savemat(src / "imagelabels.mat", {"labels": labels})
    setid = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9, 10, 11, 12]}
    scipy.io.savemat(src / "setid.mat", {k: np.array([v], np.uint16) for k, v in setid.items()})
    return src


SKETCH_CLASSES = ["airplane", "flying bird"]


def make_sketch(tmp: Path, per_class: int = 12) -> Path:
    """sketches_png.zip: png/<category>/<N>.png numbered globally, png/filelist.txt."""
    buf, listing, n = tmp / "sketches_png.zip", [], 0
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in SKETCH_CLASSES:
            for _ in range(per_class):
                n += 1
                png = io.BytesIO()
                Image.new("L", (20, 20), color=n).save(png, format="PNG")
                zf.writestr(f"png/{cls}/{n}.png", png.getvalue())
                listing.append(f"{cls}/{n}.png")
        zf.writestr("png/filelist.txt", "\n".join(listing) + "\n")
    return buf


def make_presplit(root: Path, classes: int = 2, train: int = 3, test: int = 2) -> Path:
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            for k in range(n):
                _jpeg(root / split / f"artist_{c}" / f"{k}.jpg", (30, 20), 100 * c + k)
    return root


def _prep(name: str, source: Path, out: Path, expected: Expected, **kw) -> Path:
    return prepare_dataset(
        name, source, out, expected=expected, checksums={}, workers=1, progress=False, **kw
    )


# ----------------------------------------------------------------------------- builders


def test_cub_from_tgz_layout_counts_crops_and_idempotence(tmp_path: Path) -> None:
    tgz, out = make_cub(tmp_path), tmp_path / "data"
    root = _prep("cub", tgz, out, Expected(3, 6, 6))
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        f"{c:03d}.{n}" for c, n in enumerate(CUB_CLASSES, 1)
    ]
    for split in ("train", "test"):
        assert len(list((root / split).rglob("*.jpg"))) == 6
    cls = root / "train" / "001.Black_footed_Albatross"
    # box 1.5, 2.5, 10.2 x 5.0 -> floor/ceil outward: x 1..12, y 2..8
    assert Image.open(cls / "Black_footed_Albatross_0000_1.jpg").size == (11, 6)
    test_cls = root / "test" / "001.Black_footed_Albatross"
    # box 30.4, 20.0, 15 x 15 on a 40x30 image: clipped to x 30..40, y 20..30
    assert Image.open(test_cls / "Black_footed_Albatross_0001_2.jpg").size == (10, 10)
    manifest = json.loads((root / P.MANIFEST).read_text())
    assert manifest["form"] == "official" and manifest["counts"]["test"]["images"] == 6
    first = _tree(root)
    prepare_dataset("cub", tgz, out, expected=Expected(3, 6, 6), checksums={}, workers=2)
    assert _tree(root) == first  # a second run (here with 2 worker processes) is identical
    assert sorted(p.name for p in out.iterdir()) == ["cub"]  # no temporary leftovers


def test_crop_box_rounding() -> None:
    assert P.cub_crop_box((1.5, 2.5, 10.2, 5.0), 40, 30) == (1, 2, 12, 8)
    assert P.cub_crop_box((-3.0, -1.0, 10.0, 50.0), 40, 30) == (0, 0, 7, 30)
    assert P.cars_crop_box((3, 4, 12, 10), 24, 20) == (2, 3, 12, 10)
    assert P.cars_crop_box((1, 1, 99, 99), 24, 20) == (0, 0, 24, 20)


def test_cars_archives_and_kaggle_layout_give_the_same_dataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    root = _prep("cars", make_cars(tmp_path), out, Expected(3, 6, 6))
    classes = sorted(p.name for p in (root / "test").iterdir())
    assert classes == ["001.AM_General_Hummer_SUV_2000", "002.Ram_C-V_Cargo_Van_Minivan_2012",
                       "003.Audi_R8_2012"]  # fmt: skip
    assert sorted(p.name for p in (root / "train" / classes[0]).iterdir()) == [
        "00001.jpg",
        "00004.jpg",
    ]
    # 1-based inclusive x 3..12, y 4..10 -> 10 x 7; box 2 runs off the 24x20 image
    assert Image.open(root / "train" / classes[0] / "00001.jpg").size == (10, 7)
    assert Image.open(root / "train" / classes[1] / "00002.jpg").size == (10, 17)
    first = _tree(root)
    kaggle = _prep("cars", make_cars(tmp_path, kaggle=True), tmp_path / "k", Expected(3, 6, 6))
    assert _tree(kaggle) == first


def test_flowers_split_mapping(tmp_path: Path) -> None:
    root = _prep("flowers", make_flowers(tmp_path), tmp_path / "out", Expected(3, 6, 6))
    got = {s: {p.name: p.parent.name for p in (root / s).rglob("*.jpg")} for s in ("train", "test")}
    assert sorted(got["train"]) == [f"image_{i:05d}.jpg" for i in range(1, 7)]  # trnid + valid
    assert sorted(got["test"]) == [f"image_{i:05d}.jpg" for i in range(7, 13)]  # tstid
    for split in got.values():
        for name, cls in split.items():
            assert cls == f"{FLOWER_LABELS[int(name[6:11]) - 1]:03d}"


def test_sketch_split_uses_numeric_file_order(tmp_path: Path) -> None:
    split = P.make_sketch_split(num_classes=2, per_class=12, test_per_class=3, seed=1)
    root = _prep("sketch", make_sketch(tmp_path), tmp_path / "out", Expected(2, 18, 6),
                 sketch_split=split)  # fmt: skip
    assert sorted(p.name for p in (root / "train").iterdir()) == SKETCH_CLASSES
    for c, cls in enumerate(SKETCH_CLASSES):
        want = sorted(f"{12 * c + r + 1}.png" for r in split["test_ranks"][c])
        assert sorted(p.name for p in (root / "test" / cls).iterdir()) == want


def test_shipped_sketch_split_is_the_documented_one(tmp_path: Path) -> None:
    shipped = P.load_sketch_split()
    assert shipped == P.make_sketch_split(250, 80, 16, seed=0)
    assert all(len(set(r)) == 16 and max(r) < 80 for r in shipped["test_ranks"])
    with pytest.raises(UserError, match="expects 250"):
        _prep("sketch", make_sketch(tmp_path), tmp_path / "out", Expected(2, 18, 6))


@pytest.mark.parametrize("as_zip", [False, True])
def test_authors_presplit_folder_or_archive(tmp_path: Path, as_zip: bool) -> None:
    src = make_presplit(tmp_path / "all" / "wikiart")
    make_presplit(tmp_path / "all" / "sketches")  # the all-five archive holds siblings
    if as_zip:
        archive = tmp_path / "piggyback_data.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted(src.rglob("*.jpg")):
                zf.write(p, f"wikiart/{p.relative_to(src)}")
        source = archive
    else:
        source = tmp_path / "all"
    root = _prep("wikiart", source, tmp_path / "out", Expected(2, 6, 4))
    assert _tree(root).keys() - {P.MANIFEST} == {
        str(p.relative_to(src)) for p in src.rglob("*.jpg")
    }
    assert json.loads((root / P.MANIFEST).read_text())["form"] == "presplit"


def test_resized_form_matches_the_raw_pipeline(tmp_path: Path) -> None:
    from piggyback_lab.data.transforms import build_transforms

    src = tmp_path / "sketches"
    for split in ("train", "test"):
        for c in range(2):
            img = Image.fromarray(np.random.default_rng(c).integers(0, 255, (60, 90, 3), np.uint8))
            (src / split / f"c{c}").mkdir(parents=True)
            img.save(src / split / f"c{c}" / "1.png")
    root = _prep("sketch", src, tmp_path / "out", Expected(2, 2, 2), resize=40)
    stored = Image.open(root / "test" / "c0" / "1.png")
    assert stored.size == (60, 40)  # 90x60 -> shorter side 40, as Resize(40) computes it
    tf = {"style": "resize_crop", "size": 32, "resize": 40, "mean": [0, 0, 0], "std": [1, 1, 1]}
    _, test_tf = build_transforms(tf)
    raw = test_tf(Image.open(src / "test" / "c0" / "1.png").convert("RGB"))
    assert float((test_tf(stored.convert("RGB")) - raw).abs().max()) < 1e-6
    cub = _prep("cub", make_cub(tmp_path), tmp_path / "out", Expected(3, 6, 6), resize=16)
    assert {Image.open(p).size for p in cub.rglob("*.jpg")} == {(16, 16)}


# ----------------------------------------------------------------------------- bad input


def test_wrong_archive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"images.txt not found"):
        _prep("cub", make_sketch(tmp_path), out, Expected(3, 6, 6))
    junk = tmp_path / "CUB_200_2011.tgz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a tar or zip archive"):
        _prep("cub", junk, out, Expected(3, 6, 6))
    with pytest.raises(UserError, match="exists only in the authors' archive"):
        _prep("wikiart", tmp_path / "cub_src", out, Expected(3, 6, 6))
    assert _empty(out)


def test_missing_annotation_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"bounding_boxes.txt"):
        _prep("cub", make_cub(tmp_path, skip="bounding_boxes"), out, Expected(3, 6, 6))
    assert _empty(out)
    flowers = make_flowers(tmp_path)
    (flowers / "setid.mat").unlink()
    with pytest.raises(UserError, match=r"setid.mat not found"):
        _prep("flowers", flowers, out, Expected(3, 6, 6))
    assert _empty(out)


def test_corrupt_image_is_listed_and_nothing_is_written(tmp_path: Path) -> None:
    src = make_presplit(tmp_path / "flowers")
    bad = src / "test" / "artist_1" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"1 image\(s\) cannot be decoded") as err:
        _prep("flowers", src, out, Expected(2, 6, 4))
    assert str(bad) in str(err.value)
    assert _empty(out)


def test_count_mismatch_and_override(tmp_path: Path) -> None:
    src, out = make_presplit(tmp_path / "flowers"), tmp_path / "out"
    with pytest.raises(UserError, match="expected train 2040 images / 102 classes"):
        prepare_dataset("flowers", src, out, workers=1, progress=False)
    assert _empty(out)
    root = prepare_dataset(
        "flowers", src, out, allow_count_mismatch=True, workers=1, progress=False
    )
    assert len(list(root.rglob("*.jpg"))) == 10


def test_archive_checksum_mismatch(tmp_path: Path) -> None:
    tgz, out = make_cub(tmp_path), tmp_path / "out"
    with pytest.raises(UserError, match=r"md5 .* differs from the official CUB_200_2011.tgz"):
        prepare_dataset(
            "cub",
            tgz,
            out,
            expected=Expected(3, 6, 6),
            checksums={"CUB_200_2011.tgz": Checksum(md5="0" * 32)},
            workers=1,
            progress=False,
        )
    assert _empty(out)


def test_download_plumbing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_sketch(tmp_path)
    md5 = P.file_md5(archive)
    monkeypatch.setitem(P.DOWNLOADS, "sketch", [(archive.as_uri(), "sketches_png.zip")])
    folder = tmp_path / "downloads"
    got = P.fetch("sketch", folder, {"sketches_png.zip": Checksum(md5=md5)}, progress=False)
    assert got == folder / "sketches_png.zip" and P.file_md5(got) == md5
    with pytest.raises(UserError, match="differs from the official"):
        P.fetch("sketch", tmp_path / "d2", {"sketches_png.zip": Checksum(md5="0" * 32)})
    assert _empty(tmp_path / "d2")
    for name in ("cars", "wikiart"):
        with pytest.raises(UserError, match=r"no stable public download: .*github|Kaggle"):
            P.fetch(name, folder)


def test_cli_reports_user_errors(tmp_path: Path) -> None:
    script = str(REPO / "scripts" / "prepare_data.py")
    res = subprocess.run([sys.executable, script, "wikiart", "--download"], capture_output=True,
                         text=True, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("error: wikiart has no stable public")
    res = subprocess.run([sys.executable, script, "cub", "--source", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "does not exist" in res.stderr


# ----------------------------------------------------------------------------- training


def test_prepared_miniature_trains_through_src_train(tmp_path: Path) -> None:
    import torch  # noqa: F401  (the weights file needs torch)
    from safetensors.torch import save_file

    from piggyback_lab.models import build_backbone

    root = _prep("flowers", make_flowers(tmp_path), tmp_path / "data", Expected(3, 6, 6))
    weights = tmp_path / "minicnn.safetensors"
    save_file(build_backbone("minicnn", None, 10).state_dict(), str(weights))
    results = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "src.train", "dataset=flowers", "backbone=minicnn",
        f"backbone.weights={weights}", "backbone.pretrain=false", f"dataset.root={root}",
        "dataset.num_classes=3", "dataset.transforms.size=32", "dataset.transforms.resize=36",
        "trainer=cpu", "method.epochs=1", "method.batch_size=4", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "num_workers=0",
        f"paths.results_dir={results}", f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = (results / "runs").glob("*.json")
    data = json.loads(record.read_text())
    assert data["dataset"] == "flowers" and 0.0 <= data["top1"] <= 100.0
