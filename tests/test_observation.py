"""Issue 12 item 3: each quantum's record carries the ObservationInfo of its raw-like inputs.

A real DECam primary header, written by astropy into small FITS raws, ingested into a real
butler repo with an ``exposure`` data ID, read by a real PipelineTask through ``pilot bundle``
→ ``pilot run`` → ``pilot ingest``; and the mock tasks' raws, which have no header.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astro_metadata_translator import ObservationInfo
from astro_metadata_translator.file_helpers import read_basic_metadata_from_file
from astropy.io import fits
from conftest import Campaign, make_campaign, pilot, read_report
from lsst.daf.butler import Butler, DatasetRef, DatasetType, FileDataset
from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder
from lsst.pipe.base.pipeline_graph import PipelineGraph

from pilot.demo.campaign import create_dbb
from pilot.demo.probe_tasks import ExposurePayloadConfig, ExposurePayloadTask, FitsImageFormatter

# Cards of the primary header of DECam exposure 229388 (CCD 25), as in
# astro_metadata_translator's tests/data/fitsheader-decam.yaml.
DECAM_229388 = [
    ("INSTRUME", "DECam"),
    ("TELESCOP", "CTIO 4.0-m telescope"),
    ("OBSERVAT", "CTIO"),
    ("OBS-LONG", 70.81489),
    ("OBS-LAT", -30.16606),
    ("OBS-ELEV", 2215.0),
    ("EXPREQ", 200.0),
    ("EXPTIME", 200.0),
    ("DARKTIME", 201.15662),
    ("OBSID", "ct4m20130901t060255"),
    ("DATE-OBS", "2013-09-01T06:02:55.753848"),
    ("MJD-OBS", 56536.25203419),
    ("TIMESYS", "UTC"),
    ("EXPNUM", 229388),
    ("OBJECT", "DES supernova hex SN-S1 tiling 22"),
    ("OBSTYPE", "object"),
    ("PROPID", "2012B-0001"),
    ("FILTER", "z DECam SDSS c0004 9260.0 1520.0"),
    ("TELEQUIN", 2000.0),
    ("TELRA", "02:51:16.790"),
    ("TELDEC", "-00:00:05.699"),
    ("HA", "-02:50:01.270"),
    ("ZD", 50.46),
    ("AZ", 61.24),
    ("HUMIDITY", 23.0),
    ("PRESSURE", 779.0),
    ("OUTTEMP", 11.9),
    ("AIRMASS", 1.57),
    ("CCDNUM", 25),
    ("DETPOS", "S1"),
]
EXPOSURE = 229388
FILTER = "z DECam SDSS c0004 9260.0 1520.0"
GOOD, UNKNOWN = 25, 26
"""Detector 25's raw has the DECam header; detector 26's has one no translator knows."""


def write_raw(path: Path, detector: int) -> Path:
    cards = DECAM_229388 if detector == GOOD else [("ORIGIN", "a camera nobody translates")]
    image = np.full((8, 8), float(detector), dtype=np.float32)
    fits.PrimaryHDU(image, header=fits.Header(cards)).writeto(path)
    return path


def fits_campaign(root: Path) -> Campaign:
    """A DBB holding two FITS raws of one DECam exposure, and a t0 → t1 chain reading them."""
    repo = root / "dbb"
    create_dbb(repo, 0)
    with Butler.from_config(str(repo), writeable=True, run="raw/run") as butler:
        registry = butler.registry
        registry.insertDimensionData(
            "instrument",
            {"name": "DECam", "detector_max": 100, "visit_max": 10**8, "exposure_max": 10**8},
        )
        detectors = ({"instrument": "DECam", "id": d, "full_name": f"CCD{d}"} for d in (GOOD, UNKNOWN))
        registry.insertDimensionData("detector", *detectors)
        registry.insertDimensionData("physical_filter", {"instrument": "DECam", "name": FILTER, "band": "z"})
        registry.insertDimensionData("day_obs", {"instrument": "DECam", "id": 20130831})
        registry.insertDimensionData("group", {"instrument": "DECam", "name": str(EXPOSURE)})
        exposure = {"instrument": "DECam", "id": EXPOSURE, "physical_filter": FILTER, "day_obs": 20130831}
        registry.insertDimensionData("exposure", {**exposure, "group": str(EXPOSURE), "obs_id": "ct4m"})
        raw = DatasetType(
            "raw", ["instrument", "exposure", "detector"], "NumpyArray", universe=butler.dimensions
        )
        registry.registerDatasetType(raw)
        for detector in (GOOD, UNKNOWN):
            data_id = registry.expandDataId(instrument="DECam", exposure=EXPOSURE, detector=detector)
            ref = DatasetRef(raw, data_id, run="raw/run")
            path = write_raw(root / f"raw_{detector}.fits", detector)
            butler.ingest(FileDataset(str(path), [ref], formatter=FitsImageFormatter), transfer="copy")
        pipeline = PipelineGraph()
        for index, (source, target) in enumerate([("raw", "mid"), ("mid", "final")]):
            config = ExposurePayloadConfig()
            config.connections.inputName = source
            config.connections.outputName = target
            pipeline.add_task(f"t{index}", ExposurePayloadTask, config)
        builder = AllDimensionsQuantumGraphBuilder(
            pipeline, butler, input_collections=["raw/run"], output_run="obs/run"
        )
        builder.finish(attach_datastore_records=True).write(str(root / "graph.qg"))
    return Campaign(root, repo, root / "graph.qg", "obs/run")


def staged_provenance(camp: Campaign, bundle: Path) -> dict:
    manifest = json.loads((camp.staging / bundle.stem / "manifest.json").read_text())
    return json.loads((camp.staging / bundle.stem / manifest["provenance"]).read_text())


def test_raw_fits_header_is_translated_into_the_quantum_record(tmp_path: Path) -> None:
    camp = fits_campaign(tmp_path)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir)
    assert result.returncode == 0, result.stderr
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    result = pilot("run", "--processes", "1", bundle, "--workspace", workspace)
    assert result.returncode == 0, result.stderr
    report = read_report(workspace)
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    assert {q["status"] for q in report["quanta"]} == {"succeeded"}  # an untranslatable header fails nothing

    (good,) = by_key["t0", GOOD]["observation"]["inputs"]
    assert good["dataset_type"] == "raw" and good["note"] is None
    # What the translator itself makes of the same header.
    expected = ObservationInfo(read_basic_metadata_from_file(tmp_path / f"raw_{GOOD}.fits", -1), quiet=True)
    recorded = ObservationInfo.from_simple(good["info"])
    for name in ("instrument", "exposure_time", "observation_type", "datetime_begin", "physical_filter"):
        assert getattr(recorded, name) == getattr(expected, name), name
    assert recorded == expected
    assert good["info"]["instrument"] == "DECam" and good["info"]["physical_filter"] == FILTER
    assert good["info"]["exposure_time"] == 200.0 and good["info"]["observation_type"] == "science"
    assert good["info"]["detector_num"] == GOOD and good["info"]["exposure_id"] == EXPOSURE
    assert good["datetime_begin"] == "2013-09-01T06:02:55.754" == expected.datetime_begin.utc.isot

    (unknown,) = by_key["t0", UNKNOWN]["observation"]["inputs"]
    assert unknown["info"] is None
    assert unknown["note"].startswith("FITS header of raw_DECam_") and f"_CCD{UNKNOWN}_" in unknown["note"]
    assert "not translated: ValueError: None of the registered translation classes" in unknown["note"]
    for detector in (GOOD, UNKNOWN):  # t1 reads t0's output, made in the graph: not raw-like
        assert by_key["t1", detector]["observation"] == {"inputs": [], "note": "no raw-like exposure input"}

    provenance = staged_provenance(camp, bundle)
    assert {q["quantum_id"]: q["observation"] for q in provenance["quanta"]} == {
        q["quantum_id"]: q["observation"] for q in report["quanta"]
    }
    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    registered = camp.datasets_in_run()
    assert [d for d in registered if d[0] in ("mid", "final")] == [
        (name, f"{{instrument: 'DECam', detector: {d}, exposure: {EXPOSURE}}}")
        for name in ("final", "mid")
        for d in (GOOD, UNKNOWN)
    ]


def test_mock_raw_has_no_header_and_says_so(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, n_detectors=2)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    result = pilot("run", "--processes", "0", bundle, "--workspace", workspace)
    assert result.returncode == 0, result.stderr
    report = read_report(workspace)
    for quantum in report["quanta"]:
        observation = quantum["observation"]
        if quantum["task_label"] != "isr":
            assert observation == {"inputs": [], "note": "no raw-like exposure input"}
            continue
        (raw,) = observation["inputs"]
        assert raw["dataset_type"] == "raw" and raw["info"] is None
        assert raw["note"].startswith("input has no FITS header: raw_DemoCam_S")
        assert raw["note"].endswith(".json (storage class _mock_StructuredDataDict) is not a FITS file")
    provenance = staged_provenance(camp, bundle)
    observations = {q["quantum_id"]: q["observation"] for q in report["quanta"]}
    assert {q["quantum_id"]: q["observation"] for q in provenance["quanta"]} == observations
