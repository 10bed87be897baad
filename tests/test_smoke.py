from conftest import Campaign, pilot, read_report


def test_bundle_run_ingest(campaign: Campaign) -> None:
    files = campaign.bundle_files()
    assert len(files) == 3
    for path in files:
        result = pilot("run", "--processes", "0", path, "--workspace", campaign.root / "ws" / path.stem)
        assert result.returncode == 0, result.stderr
        report = read_report(campaign.root / "ws" / path.stem)
        assert report["counts"]["succeeded"] == 6
    result = pilot("ingest", campaign.repo)
    assert result.returncode == 0, result.stderr
    names = [name for name, _ in campaign.datasets_in_run()]
    assert names.count("src") == 6 and names.count("measure_log") == 6
