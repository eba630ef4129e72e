"""Hugging Face dataset export, save, push (no token here) and import round trip."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import datasets
import pytest

from annotation_db import (
    Database,
    DatabaseConfig,
    HubError,
    Repository,
    RepositoryConfig,
    ValidationError,
    create_db_engine,
)
from annotation_db.export import (
    FEATURES,
    export_dataset,
    import_dataset,
    load_dataset_file,
    push_dataset,
    save_dataset,
)


@pytest.fixture
def judged(repo, world, clock):
    s = world.samples
    repo.record_judgment(s[0], "annotator-a", "cat", "dog", shown_left="base", said_right="right")
    repo.record_judgment(s[0], "annotator-b", "cat", "dog")
    repo.record_judgment(s[0], "annotator-c", "dog", "cat")
    repo.record_judgment(s[1], "annotator-a", "bird", "cat")
    repo.ensure_annotator("maintainer")
    repo.record_judgment(s[2], "maintainer", "fish", "cat", kind="gold")
    clock.advance(1)
    repo.record_judgment(s[3], "annotator-d", "cat", "bird")
    repo.undo_last_judgment("annotator-d")  # not exported
    return repo


def rows_of(dataset):
    def key(row):
        return (row["image_sha256"], row["annotator_hash"])

    return sorted(dataset.cast_column("image", datasets.Image(decode=False)), key=key)


def test_export_columns_and_values(judged, clock):
    ds = export_dataset(judged)
    assert set(ds.column_names) == set(FEATURES)
    assert len(ds) == 5
    handles = {a.pseudonym: a.handle for a in (judged.get_annotator(f"annotator-{c}") for c in "abc")}
    first = ds[0]
    assert first["image"].size == (8, 6)  # decoded as a PIL image by datasets
    assert (first["chosen"], first["rejected"], first["kind"]) == ("cat", "dog", "human")
    assert (first["shown_left"], first["said_right"]) == ("base", "right")
    assert first["prompt"] == "a photo of a {}." and first["labels"] == ["cat", "dog", "bird", "fish"]
    assert first["annotator_hash"] in handles and "annotator" not in first["annotator_hash"]
    assert first["agreement"] == pytest.approx(2 / 3)
    assert first["created"] == clock() - timedelta(seconds=1)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    for row in raw:
        assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["image_sha256"]
    attacked = [row for row in ds if row["attack"]]
    assert attacked and all(row["attack"].startswith("{") for row in attacked)
    gold = [row for row in ds if row["kind"] == "gold"]
    assert len(gold) == 1 and gold[0]["agreement"] == 1.0


@pytest.mark.parametrize("parquet", [False, True], ids=["save_to_disk", "parquet"])
def test_round_trip_into_a_fresh_database(judged, new_database, tmp_path, parquet):
    exported = export_dataset(judged)
    path = save_dataset(exported, tmp_path / ("pairs.parquet" if parquet else "pairs"), parquet=parquet)
    assert path.exists()

    # The same pair policies as the exporting repository (the plain ``repo`` fixture's), so the pairs compare.
    plain = RepositoryConfig(min_gold_seen=0, max_annotator_share=1.0)
    other = Repository(Database(create_db_engine(DatabaseConfig(new_database()))), tmp_path / "data2", plain)
    try:
        report = import_dataset(other, path)
        assert (report.added, report.duplicates, report.errors) == (5, 0, [])
        assert rows_of(export_dataset(other)) == rows_of(exported)
        assert other.stats().judgments == 5 and other.stats().images == 3  # the undone one is not exported
        assert len(other.training_pairs().pairs) == len(judged.training_pairs().pairs)
        again = import_dataset(other, load_dataset_file(path))
        assert (again.added, again.duplicates) == (0, 5)  # importing twice adds nothing
    finally:
        other.close()


def test_import_reports_bad_rows_and_keeps_the_good_ones(judged, new_database, tmp_path):
    exported = export_dataset(judged)
    broken = exported.map(lambda row, i: {"chosen": "unicorn"} if i == 1 else {}, with_indices=True)
    other = Repository(Database(create_db_engine(DatabaseConfig(new_database()))), tmp_path / "data2")
    try:
        report = import_dataset(other, broken)
        assert report.added == 4 and len(report.errors) == 1
        assert report.errors[0].startswith("row 1:") and "'unicorn' is not in label set" in report.errors[0]
    finally:
        other.close()


def test_import_refuses_a_foreign_dataset(repo, tmp_path):
    with pytest.raises(ValidationError, match="missing columns"):
        import_dataset(repo, datasets.Dataset.from_dict({"text": ["hi"]}))
    with pytest.raises(ValidationError, match="neither a saved dataset folder nor a .parquet file"):
        load_dataset_file(tmp_path / "nothing.csv")


def test_export_since_a_version(judged, clock):
    batch = judged.training_pairs()
    version = judged.register_version("bundled", "h", {}, judgment_watermark=batch.watermark)
    assert len(export_dataset(judged, since_version=version.id)) == 0
    judged.record_judgment(judged.next_sample("annotator-e").id, "annotator-e", "cat", "dog")
    assert len(export_dataset(judged, since_version=version.id)) == 1


def test_push_needs_a_token(judged):
    ds = export_dataset(judged)
    for token in (None, ""):
        with pytest.raises(HubError, match="no Hugging Face token configured: set HF_TOKEN"):
            push_dataset(ds, "someone/poclip-preferences", token=token)
    with pytest.raises(HubError, match="must look like 'owner/name'"):
        push_dataset(ds, "not a repo id", token="hf_dummy")
