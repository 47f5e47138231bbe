"""`domainfm index` on the real files of ../shared/data/medical (read-only) and on a synthetic dump carrying every
patient identifier a PACS export has (dicom_factory.PHI): manifest, skipped objects, failures with reasons,
decoded cache, resume, DICOMDIR input, and no identifier in anything the run wrote or printed."""

import csv
import gzip
import json
import logging

import numpy as np
import pytest
from domainfm.errors import ConfigError
from domainfm.medical.index import IndexParams, index_archive
from domainfm.medical.readers import read_nifti, read_volume

from tests.conftest import compose
from tests.medical.dicom_factory import PHI, write_series


@pytest.fixture(scope="module")
def real_index(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    summary = index_archive(shared_data / "medical", out, IndexParams(cache=True), workers=1, progress=False)
    return out, summary


def manifest(out):
    with (out / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_real_dump_manifest_statuses_and_skipped_objects(real_index, shared_data):
    out, summary = real_index
    rows = manifest(out)
    assert len(rows) == 138 and {r["id"] for r in rows} == {r["id"] for r in summary.rows}
    status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "warning", "failed")}
    assert (len(status["ok"]), len(status["warning"]), len(status["failed"])) == (132, 1, 5)
    assert dict(summary.skipped) == {"DICOMDIR": 7, "SEG": 1, "not DICOM": 4}  # + README / licence / npz files
    (gap,) = status["warning"]  # dicomdir_tiny CT2: InstanceNumber 18, 180, 181, 182
    assert gap["reason"].startswith("missing slices: about 161 gap slice(s)") and gap["modality"] == "CT"
    reasons = sorted(r["reason"] for r in status["failed"])
    assert sum("different orientations (a localizer or radial series)" in r for r in reasons) == 4
    assert "fmri_4d.nii.gz: 4D (128x96x24x2); give frame=<0..1> to take one volume" in reasons
    assert not any(str(shared_data) in r for r in reasons)  # paths relative to data.root only
    ct = shared_data / "medical" / "ct_3slice_series"
    (row,) = [r for r in rows if r["shape"] == "512x512x3"]
    assert (row["modality"], row["spacing"], row["orientation"]) == ("CT", "0.8105x0.8105x1", "RAS")
    cached, direct = read_nifti(out / row["volume"]), read_volume(ct)
    np.testing.assert_array_equal(cached.array, direct.array)
    np.testing.assert_allclose(cached.affine, direct.affine, atol=1e-5)
    files = json.loads((out / "series" / f"{row['id']}.json").read_text())["files"]
    assert files == ["ct_3slice_series/01.dcm", "ct_3slice_series/02.dcm", "ct_3slice_series/03.dcm"]


def test_rerun_resumes_and_a_lost_record_is_redone(real_index, shared_data):
    out, first = real_index
    before = (out / "manifest.csv").read_text()
    victim = first.rows[0]["id"]
    (out / "series" / f"{victim}.json").unlink()
    (out / "manifest.csv").unlink()  # as after a kill before the manifest was written
    again = index_archive(shared_data / "medical", out, IndexParams(cache=True), workers=1, progress=False)
    assert again.done_before == 137 and (out / "manifest.csv").read_text() == before


def test_dicomdir_input_lists_the_same_series_as_the_folder(shared_data, tmp_path):
    tiny = shared_data / "medical" / "dicomdir_tiny"
    by_dir = index_archive(tiny / "DICOMDIR", tmp_path / "a", workers=1, progress=False)
    by_walk = index_archive(tiny, tmp_path / "b", workers=1, progress=False)
    assert {r["id"] for r in by_dir.rows} == {r["id"] for r in by_walk.rows} and len(by_dir.rows) == 13
    assert by_dir.skipped == {} and by_walk.skipped["DICOMDIR"] == 7  # the DICOMDIR variants of the folder
    (tmp_path / "link").symlink_to(tiny, target_is_directory=True)  # a dump behind a symlink: paths as given
    linked = index_archive(tmp_path / "link" / "DICOMDIR", tmp_path / "c", workers=1, progress=False)
    record = json.loads(next((tmp_path / "c" / "series").iterdir()).read_text())
    assert len(linked.rows) == 13 and not any(f.startswith("/") for f in record["files"])


def test_no_patient_identifier_in_anything_the_run_writes_or_prints(tmp_path, capfd, caplog):
    """Synthetic dump: two series carrying PatientName, PatientID, birth date, accession number, institution,
    physician, dates and UIDs; a slice whose header is cut (skipped, counted, named: its series has a gap), a
    slice whose pixel data is cut (its series fails with the reason), and a text file."""
    dump = tmp_path / "dump"
    data = np.random.default_rng(0).integers(0, 500, (4, 8, 8)).astype(np.int16)
    positions = np.stack([np.zeros(4), np.zeros(4), 1.5 * np.arange(4)], 1)
    uids = [write_series(dump / "s1", data, positions), write_series(dump / "s2", data[:3], positions[:3] * 2)]
    (dump / "s1" / "IM00003").write_bytes((dump / "s1" / "IM00003").read_bytes()[:300])  # header cut
    cut = dump / "s2" / "IM00002"
    cut.write_bytes(cut.read_bytes()[:-40])  # pixel data cut
    (dump / "notes.txt").write_text("scanner export log")
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    cfg = compose("index", [f"data.root={dump}", f"out={out}", "index.cache=true", "index.spacing=[1,1,1]"])
    from domainfm.medical.commands import index

    result = index.run(cfg)
    assert result["status"] == {"ok": 0, "warning": 1, "failed": 1}
    assert result["skipped_objects"] == {"not DICOM": 1, "unreadable": 1}
    (unreadable,) = result["unreadable"]
    assert unreadable.startswith("s1/IM00003: ")
    rows = {r["status"]: r for r in manifest(out)}
    assert rows["warning"]["reason"].startswith("missing slices: about 1 gap slice(s)")
    assert rows["warning"]["volume"] and not rows["failed"]["volume"] and rows["failed"]["reason"]
    printed = capfd.readouterr()
    identifiers = [*PHI.values(), *uids, "Jane", "99812345"]
    written = []
    for path in out.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            written.append(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    assert len(written) >= 5  # manifest, summary, 2 series records, 1 cached volume
    texts = [w.decode("latin-1") for w in written] + [printed.out, printed.err, caplog.text]
    for value in identifiers:
        assert not any(value in t for t in texts), value


def test_index_command_errors_name_the_key(tmp_path):
    from domainfm.medical.commands import index

    with pytest.raises(ConfigError, match=r"data.root=<a DICOM dump folder, a DICOMDIR or a volume> is required"):
        index.run(compose("index", [f"out={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"index.spacing=\[1, 1\]: three voxel sizes"):
        index.run(compose("index", [f"data.root={tmp_path}", f"out={tmp_path}", "index.spacing=[1,1]"]))


def test_pretraining_on_an_index_writes_no_identifier(tmp_path):
    """A synthetic CT series carrying every identifier of dicom_factory.PHI -> index with cache -> one step of
    `medical/dinov2_slices_tiny` on it: config, logs, metrics, checkpoint and export hold none of them."""
    from tests.conftest import pretrain_in_process

    data = np.random.default_rng(1).integers(0, 1500, (6, 16, 16)).astype(np.int16)
    positions = np.stack([np.zeros(6), np.zeros(6), 2.0 * np.arange(6)], 1)
    uid = write_series(tmp_path / "dump" / "ct", data, positions)
    index_archive(tmp_path / "dump", tmp_path / "index", IndexParams(cache=True), workers=1, progress=False)
    run = tmp_path / "run"
    pretrain_in_process([
        "recipe=medical/dinov2_slices_tiny", f"data.root={tmp_path / 'index'}", f"run_dir={run}", "trainer.max_steps=1",
        "data.batch_size=4", "data.num_workers=0", "trainer.progress=false", "+backbone.depth=1", "method.out_dim=64",
        "method.hidden_dim=32", "trainer.checkpoint_every=1",
    ])  # fmt: skip
    written = [path.read_bytes() for path in run.rglob("*") if path.is_file()]
    assert any((run / "export").iterdir()) and any((run / "checkpoints").iterdir())
    for value in [*PHI.values(), uid]:
        assert not any(value.encode() in raw for raw in written), value
