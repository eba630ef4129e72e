"""Judgments as a Hugging Face dataset: export, save (disk or parquet), push to the Hub, and import back.

One row per (not undone) judgment:

    image           the stored PNG (datasets.Image); the attack is drawn on it by ``attack``
    image_sha256, image_source
    attack          canonical JSON of the attack parameters, "" for the clean image
    prompt          the label set's prompt template, e.g. "a photo of a {}."
    label_set, labels
    chosen, rejected
    kind            human / gold / synthetic
    annotator_hash  the annotator's pseudonym, never the handle
    shown_left, said_right   arena fields (None outside the arena)
    created         UTC timestamp
    agreement       share of the sample's votes (not gold) that chose the same label as this row
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from sqlalchemy import select

from annotation_db.errors import DuplicateJudgmentError, HubError, ValidationError
from annotation_db.models import Annotator, Image, Judgment, JudgmentKind, LabelSet, Sample
from annotation_db.validation import canonical_json

if TYPE_CHECKING:
    from annotation_db.repository import Repository

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_sha256": datasets.Value("string"),
        "image_source": datasets.Value("string"),
        "attack": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "label_set": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("string")),
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "annotator_hash": datasets.Value("string"),
        "shown_left": datasets.Value("string"),
        "said_right": datasets.Value("string"),
        "created": datasets.Value("timestamp[us, tz=UTC]"),
        "agreement": datasets.Value("float64"),
    }
)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0  # already in the database (same sample and annotator); importing twice is harmless
    errors: list[str] = field(default_factory=list)  # "row N: message" for rows that were not imported


def export_dataset(repo: Repository, *, since_version: int | None = None) -> datasets.Dataset:
    """All judgments that count (not undone) as a :class:`datasets.Dataset` with the columns above.

    Args:
        repo: the store.
        since_version: only judgments after that model version's watermark.
    """
    floor = 0 if since_version is None else repo.version_watermark(since_version)
    with repo.db.reading() as s:
        rows = s.execute(
            select(Judgment, Annotator.pseudonym, Sample.attack, Image, LabelSet)
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .join(Sample, Sample.id == Judgment.sample_id)
            .join(Image, Image.sha256 == Sample.image_sha256)
            .join(LabelSet, LabelSet.id == Sample.label_set_id)
            .where(Judgment.undone_at.is_(None), Judgment.id > floor)
            .order_by(Judgment.id)
        ).all()

    votes: dict[int, Counter[str]] = defaultdict(Counter)
    for judgment, *_ in rows:
        if judgment.kind is not JudgmentKind.GOLD:
            votes[judgment.sample_id][judgment.chosen] += 1

    columns: dict[str, list[Any]] = {name: [] for name in FEATURES}
    image_bytes: dict[str, bytes] = {}
    for judgment, pseudonym, attack, image, label_set in rows:
        if image.sha256 not in image_bytes:
            image_bytes[image.sha256] = (repo.data_dir / image.path).read_bytes()
        sample_votes = votes[judgment.sample_id]
        total = sum(sample_votes.values())
        row = {
            "image": {"bytes": image_bytes[image.sha256], "path": None},
            "image_sha256": image.sha256,
            "image_source": image.source.value,
            "attack": "" if attack is None else canonical_json(attack),
            "prompt": label_set.prompt_template,
            "label_set": label_set.name,
            "labels": list(label_set.labels),
            "chosen": judgment.chosen,
            "rejected": judgment.rejected,
            "kind": judgment.kind.value,
            "annotator_hash": pseudonym,
            "shown_left": None if judgment.shown_left is None else judgment.shown_left.value,
            "said_right": None if judgment.said_right is None else judgment.said_right.value,
            "created": judgment.created_at,
            "agreement": sample_votes[judgment.chosen] / total if total else 1.0,
        }
        for name, value in row.items():
            columns[name].append(value)
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def save_dataset(dataset: datasets.Dataset, path: str | Path, *, parquet: bool = False) -> Path:
    """Write the dataset to a folder (``save_to_disk``) or, with ``parquet``, to one parquet file."""
    path = Path(path)
    if parquet:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    return path


def load_dataset_file(path: str | Path) -> datasets.Dataset:
    """Read what :func:`save_dataset` wrote: a ``save_to_disk`` folder or a parquet file."""
    path = Path(path)
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path), features=FEATURES)
    raise ValidationError(f"{path} is neither a saved dataset folder nor a .parquet file")


def push_dataset(dataset: datasets.Dataset, repo_id: str, *, token: str | None, private: bool = True) -> None:
    """Push the dataset to the Hugging Face Hub as ``repo_id`` (``owner/name``).

    Args:
        token: a write token (the app passes its configured ``HF_TOKEN``); without one nothing is attempted.
        private: create the dataset repository as private.
    Raises:
        HubError: no token, a malformed repo id, or the push failed (network, permissions).
    """
    if not token:
        raise HubError("no Hugging Face token configured: set HF_TOKEN to a write token to push the dataset")
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
        raise HubError(f"dataset repo id must look like 'owner/name', got {repo_id!r}")
    try:
        dataset.push_to_hub(repo_id, token=token, private=private)
    except Exception as exc:  # network, auth and quota errors all mean "not pushed"
        raise HubError(f"pushing the dataset to {repo_id} failed: {exc}") from exc


def import_dataset(repo: Repository, source: datasets.Dataset | str | Path) -> ImportReport:
    """Load judgments in the export format (a Dataset, a saved folder or a parquet file) into the store.

    Each row becomes the same image (by content hash), label set, sample and judgment; annotators are
    recreated from their pseudonyms (handle ``import-<hash>``). Rows already present are counted as
    duplicates, so importing twice adds nothing. Rows that fail validation are reported, not imported.
    """
    dataset = source if isinstance(source, datasets.Dataset) else load_dataset_file(source)
    missing = set(FEATURES) - set(dataset.column_names)
    if missing:
        raise ValidationError(f"not a PO-CLIP preference dataset: missing columns {sorted(missing)}")
    # Raw bytes, not decoded images: the content hash must be of the exact PNG that was exported.
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    report = ImportReport()
    handles: dict[str, str] = {}
    for index, row in enumerate(dataset):
        try:
            _import_row(repo, row, handles)
            report.added += 1
        except DuplicateJudgmentError:
            report.duplicates += 1
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            report.errors.append(f"row {index}: {exc}")
    return report


def _import_row(repo: Repository, row: dict[str, Any], handles: dict[str, str]) -> None:
    image = row["image"] or {}
    data = image.get("bytes")
    if data is None and image.get("path"):
        data = Path(image["path"]).read_bytes()
    stored = repo.store_image(data, source=row["image_source"] or "example")
    repo.ensure_label_set(row["label_set"], list(row["labels"]), row["prompt"])
    pseudonym = row["annotator_hash"]
    if pseudonym not in handles:
        handles[pseudonym] = repo.ensure_annotator(f"import-{pseudonym}", pseudonym=pseudonym).handle
    attack = json.loads(row["attack"]) if row["attack"] else None
    sample = repo.add_sample(stored.sha256, row["label_set"], attack)
    repo.record_judgment(
        sample.id,
        handles[pseudonym],
        row["chosen"],
        row["rejected"],
        kind=row["kind"],
        shown_left=row["shown_left"],
        said_right=row["said_right"],
        created_at=row["created"],
        enforce_rate_limit=False,
    )
