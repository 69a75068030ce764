"""The load benchmark's kept import (pure file handling): every later run starts from it."""

from pathlib import Path

from benchmarks.load import dataset


def store_files(data_dir: Path) -> dict[str, bytes]:
    root = data_dir / dataset.STORE_FILES
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.*")}


def test_a_run_starts_from_the_store_files_the_import_left(tmp_path: Path) -> None:
    store = tmp_path / dataset.STORE_FILES
    store.mkdir()
    (store / "base.rdb").write_bytes(b"imported")
    (store / "manifest.aof").write_bytes(b"1")
    dataset.keep_import(tmp_path)
    imported = store_files(tmp_path)
    (store / "base.rdb").write_bytes(b"after a run's events")  # what a run leaves behind
    (store / "incr.aof").write_bytes(b"and the probe's writes")
    assert dataset.restore_import(tmp_path)
    assert store_files(tmp_path) == imported


def test_without_a_kept_import_the_store_files_are_left_as_they_are(tmp_path: Path) -> None:
    store = tmp_path / dataset.STORE_FILES
    store.mkdir()
    (store / "base.rdb").write_bytes(b"earlier runs' state")
    assert not dataset.restore_import(tmp_path)
    assert store_files(tmp_path) == {"base.rdb": b"earlier runs' state"}
