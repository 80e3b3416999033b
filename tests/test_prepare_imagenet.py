"""ImageNet (ILSVRC-2012) preparation from miniature archives in the official formats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from piggyback_lab.data import prepare as P
from piggyback_lab.data.prepare import Expected, prepare_dataset
from piggyback_lab.utils.errors import UserError
from tests.test_prepare import REPO, _empty, _prep, _struct, _tree

# ILSVRC2012_ID -> wnid; the ids' order is not the sorted wnid order, as in the real devkit.
LEAVES = {1: "n02119789", 2: "n02100735", 3: "n01440764"}
ANCESTOR = (1001, "n00001740")  # a non-leaf synset (num_children > 0): not a class
VAL_TRUTH = [3, 1, 2, 3]  # ILSVRC2012_IDs of ILSVRC2012_val_00000001 .. 00000004
MINI = Expected(3, 6, 4)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _meta_mat(path: Path) -> None:
    """meta.mat's ``synsets`` struct array with the real file's fields, in its order."""
    rows = [
        {"ILSVRC2012_ID": i, "WNID": w, "words": f"class {i}, synonym", "gloss": "a leaf",
         "num_children": 0, "children": np.zeros((1, 0)), "wordnet_height": 0,
         "num_train_images": 2}
        for i, w in LEAVES.items()
    ] + [
        {"ILSVRC2012_ID": ANCESTOR[0], "WNID": ANCESTOR[1], "words": "entity", "gloss": "root",
         "num_children": 3, "children": np.array([[1, 2, 3]]), "wordnet_height": 1,
         "num_train_images": 6}
    ]  # fmt: skip
    scipy.io.savemat(path, {"synsets": _struct(rows)})


def make_imagenet(
    tmp: Path, truth: list[int] = VAL_TRUTH, meta: bool = True, train_extra: str | None = None
) -> Path:
    """The three official files: 3 classes x 2 train images as inner <wnid>.tar files inside
    ILSVRC2012_img_train.tar, 4 flat validation images, and the devkit .tar.gz."""
    src = tmp / "imagenet_src"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in LEAVES.values():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for k in range(2):
                    _add(tar, f"{wnid}_{k + 1}.JPEG", _jpeg_bytes(int(wnid[1:]) % 1000 + k))
            _add(outer, f"{wnid}.tar", inner.getvalue())
        if train_extra:
            _add(outer, train_extra, b"stray")
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(1, len(VAL_TRUTH) + 1):
            _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg_bytes(100 + i))
    data = tmp / "devkit" / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    if meta:
        _meta_mat(data / "meta.mat")
    (data / P.IMAGENET_GROUND_TRUTH).write_text("".join(f"{i}\n" for i in truth))
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(data.parent, arcname="ILSVRC2012_devkit_t12")
    return src


def test_imagenet_from_the_official_archives(tmp_path: Path) -> None:
    src, out = make_imagenet(tmp_path), tmp_path / "data"
    root = _prep("imagenet", src, out, MINI)
    wnids = sorted(LEAVES.values())  # the non-leaf synset is no class
    for split in ("train", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == wnids
    for wnid in wnids:
        files = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert files == [f"{wnid}_1.JPEG", f"{wnid}_2.JPEG"]
    got = {p.name: p.parent.name for p in (root / "test").rglob("*.JPEG")}
    assert got == {f"ILSVRC2012_val_{i:08d}.JPEG": LEAVES[gt] for i, gt in enumerate(VAL_TRUTH, 1)}
    with tarfile.open(src / "ILSVRC2012_img_val.tar") as tar:  # copied byte for byte
        first = tar.extractfile("ILSVRC2012_val_00000001.JPEG").read()
    assert (root / "test" / LEAVES[3] / "ILSVRC2012_val_00000001.JPEG").read_bytes() == first
    manifest = json.loads((root / P.MANIFEST).read_text())
    assert manifest["form"] == "official" and manifest["counts"] == {
        "train": {"images": 6, "classes": 3},
        "test": {"images": 4, "classes": 3},
    }
    tree = _tree(root)
    assert _tree(_prep("imagenet", src, out, MINI)) == tree  # a second run: the same bytes
    assert sorted(p.name for p in out.iterdir()) == ["imagenet"]  # no temporary leftovers


def test_labels_agree_with_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import imagenet as tv

    src = make_imagenet(tmp_path)
    devkit = src / "ILSVRC2012_devkit_t12.tar.gz"
    monkeypatch.setitem(tv.ARCHIVE_META, "devkit", (devkit.name, P.file_md5(devkit)))
    tv.parse_devkit_archive(str(src))  # torchvision's own reading, saved as src/meta.bin
    wnid_to_classes, tv_val_wnids = tv.load_meta_file(str(src))
    wnids, val_wnids = P.imagenet_labels(devkit, tmp_path / "work")
    assert wnids == set(wnid_to_classes) and val_wnids == tv_val_wnids


def test_count_check_resize_and_checksums(tmp_path: Path) -> None:
    src, out = make_imagenet(tmp_path), tmp_path / "out"
    kw = {"workers": 1, "progress": False}
    with pytest.raises(UserError, match="expected train 1281167 images / 1000 classes"):
        prepare_dataset("imagenet", src, out, verify=False, **kw)
    assert _empty(out)
    # the official checksums (torchvision's md5s) reject the miniature, before any extraction
    with pytest.raises(UserError, match=r"md5 .* differs from the official ILSVRC2012_devkit"):
        prepare_dataset("imagenet", src, out, allow_count_mismatch=True, **kw)
    assert _empty(out)
    root = prepare_dataset(
        "imagenet", src, out, allow_count_mismatch=True, verify=False, resize=8, **kw
    )
    assert {Image.open(p).size for p in root.rglob("*.JPEG")} == {(10, 8)}  # 16x12, short 8


def _break(case: str, src: Path) -> Path:
    """Damage the miniature ``src`` as ``case`` says; returns the --source to pass."""
    train, val = src / "ILSVRC2012_img_train.tar", src / "ILSVRC2012_img_val.tar"
    devkit = src / "ILSVRC2012_devkit_t12.tar.gz"
    if case.startswith("no-") and case != "no-meta":
        {"no-train": train, "no-val": val, "no-devkit": devkit}[case].unlink()
    elif case.startswith("truncated-"):  # cut inside the second member's data
        path = train if case == "truncated-train" else val
        with tarfile.open(path) as tar:
            member = tar.getmembers()[1]
        path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])
    elif case == "corrupt-devkit":
        devkit.write_bytes(b"<html>sign in first</html>")
    return train if case == "file-source" else src


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no-train", r"ILSVRC2012_img_train.tar not found in .*image-net.org"),
        ("no-val", r"ILSVRC2012_img_val.tar not found in .*image-net.org"),
        ("no-devkit", r"ILSVRC2012_devkit_t12.tar.gz not found in .*image-net.org"),
        ("file-source", r"--source must be the folder holding"),
        ("no-meta", r"data/meta.mat not found; .* is not the ILSVRC-2012 devkit"),
        ("short-truth", r"has 3 labels but ILSVRC2012_img_val.tar holds 4 images"),
        ("bad-truth", r"ground_truth.txt:2: '1001' is not the ILSVRC2012_ID of a class"),
        ("truncated-train", r"ILSVRC2012_img_train.tar: cannot extract it"),
        ("truncated-val", r"ILSVRC2012_img_val.tar: cannot extract it"),
        ("corrupt-devkit", r"ILSVRC2012_devkit_t12.tar.gz is not a tar or zip archive"),
        ("stray-train-member", r"member 'README.txt' is not the <wnid>.tar of a class"),
    ],
)
def test_bad_input(tmp_path: Path, case: str, needle: str) -> None:
    kwargs = {
        "short-truth": {"truth": VAL_TRUTH[:3]},
        "bad-truth": {"truth": [3, 1001, 2, 3]},
        "no-meta": {"meta": False},
        "stray-train-member": {"train_extra": "README.txt"},
    }.get(case, {})
    out = tmp_path / "out"
    source = _break(case, make_imagenet(tmp_path, **kwargs))
    with pytest.raises(UserError, match=needle):
        _prep("imagenet", source, out, MINI)
    assert _empty(out)


@pytest.mark.slow  # the command line over the miniature archives; its steps run above
def test_cli(tmp_path: Path) -> None:
    """--download names where to get the files; a prepared run goes through the CLI."""
    script = str(REPO / "scripts" / "prepare_data.py")
    res = subprocess.run([sys.executable, script, "imagenet", "--download"], capture_output=True,
                         text=True, cwd=tmp_path)  # fmt: skip
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr
    assert "registration" in errors[0] and "image-net.org" in errors[0]
    assert not (tmp_path / "data").exists()
    src, out = make_imagenet(tmp_path), tmp_path / "out"
    res = subprocess.run(
        [sys.executable, script, "imagenet", "--source", str(src), "--out", str(out),
         "--allow-count-mismatch", "--no-verify", "--workers", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((out / "imagenet").rglob("*.JPEG"))) == 10
