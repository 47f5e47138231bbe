"""DICOM series load time: domainfm's reader against SimpleITK's ImageSeriesReader (GDCM) on the same series, in one
run, with the same voxels and affine asserted first.

    .venv/bin/python benchmarks/dicom_load.py [--slices 300] [--size 512] [--repeats 5]

The series is written here with pydicom (synthetic CT: int16 noise, 0.7 x 0.7 mm, 1.25 mm steps, shuffled
InstanceNumber; ``.bench/dicom_load/``). Each repeat times both readers, alternating which goes first; the page
cache is warm for both (the files are read once before timing). Reports median seconds and the ratio
SimpleITK / domainfm (> 1: domainfm is faster)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write(folder: Path, slices: int, size: int) -> Path:
    from tests.medical.dicom_factory import write_series

    if folder.is_dir() and len(list(folder.iterdir())) == slices:
        return folder
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, (slices, size, size)).astype(np.int16)
    positions = np.stack([np.full(slices, -180.0), np.full(slices, -180.0), 1.25 * np.arange(slices)], 1)
    order = rng.permutation(slices) + 1
    write_series(folder, data, positions, pixel_spacing=(0.7, 0.7), instance_numbers=order, phi=False)
    return folder


def read_ours(folder: Path):
    from domainfm.medical.readers import read_volume

    return read_volume(folder)


def read_sitk(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from tests.medical.test_geometry import sitk_ras

    folder = write(REPO / ".bench" / "dicom_load" / f"ct_{args.slices}x{args.size}", args.slices, args.size)
    ours, image = read_ours(folder), read_sitk(folder)
    array, affine = sitk_ras(image)
    assert np.array_equal(ours.array, array) and np.allclose(ours.affine, affine, atol=1e-4), "readers disagree"
    times: dict[str, list[float]] = {"domainfm": [], "SimpleITK": []}
    for r in range(args.repeats):
        pair = [("domainfm", read_ours), ("SimpleITK", read_sitk)]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            fn(folder)
            times[name].append(time.perf_counter() - t0)
    ours_s, sitk_s = statistics.median(times["domainfm"]), statistics.median(times["SimpleITK"])
    print(f"{args.slices} slices of {args.size}x{args.size} int16, {args.repeats} repeats, same voxels and affine")
    print("| reader | median s | all |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    print(f"SimpleITK / domainfm = {sitk_s / ours_s:.2f} (> 1: domainfm faster)")


if __name__ == "__main__":
    main()
