"""Images by content hash, label sets, samples and annotators."""

from __future__ import annotations

import hashlib
import io

import PIL.Image
import pytest
from sqlalchemy import func, select

from annotation_db import NotFoundError, RepositoryConfig, ValidationError
from annotation_db.models import Image, LabelSet, Sample


def count(repo, model):
    with repo.db.reading() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_store_image_by_content_hash(repo, png, tmp_path):
    data = png(1, size=(9, 7))
    repo.ensure_annotator("uploader")
    image = repo.store_image(data, source="upload", uploader="uploader")
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.path == tmp_path / "data" / "images" / image.sha256[:2] / f"{image.sha256}.png"
    assert image.path.read_bytes() == data
    assert (image.width, image.height, image.n_bytes, image.source) == (9, 7, len(data), "upload")
    again = repo.store_image(data, source="example")
    assert again == image  # first write wins; nothing duplicated
    assert count(repo, Image) == 1
    assert repo.get_image(image.sha256) == image
    assert [p.name for p in image.path.parent.iterdir()] == [image.path.name]  # no temp files left


def test_store_image_accepts_a_pil_image(repo):
    image = repo.store_image(PIL.Image.new("RGB", (5, 4), "red"), source="synthetic")
    with PIL.Image.open(image.path) as stored:
        assert stored.size == (5, 4) and stored.getpixel((0, 0)) == (255, 0, 0)


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"definitely not an image", {}, "not a readable PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, {}, "not a readable PNG"),
        (None, {}, "must be PNG bytes or a PIL image"),
        (b"", {}, "image is empty"),
        ("jpeg", {}, "must be PNG bytes, got JPEG"),
        ("png", {"source": "scraped"}, "image source must be one of upload, synthetic, example"),
    ],
)
def test_bad_images_write_nothing(repo, png, tmp_path, data, kwargs, message):
    data = {"jpeg": jpeg_bytes(), "png": png(3)}.get(data, data) if isinstance(data, str) else data
    with pytest.raises(ValidationError, match=message):
        repo.store_image(data, **kwargs)
    assert count(repo, Image) == 0
    assert not (tmp_path / "data" / "images").exists()


def test_unknown_uploader_writes_nothing(repo, png, tmp_path):
    with pytest.raises(NotFoundError, match="unknown annotator"):
        repo.store_image(png(1), uploader="ghost")
    assert count(repo, Image) == 0 and not (tmp_path / "data" / "images").exists()


def test_oversized_image_is_refused(make_repo, png):
    repo = make_repo(RepositoryConfig(max_image_bytes=100))
    with pytest.raises(ValidationError, match="too large"):
        repo.store_image(png(1, size=(64, 64)))


def test_label_sets_are_immutable_and_validated(repo):
    created = repo.ensure_label_set("animals", ["cat", "dog"])
    assert created.prompts() == ["a photo of a cat.", "a photo of a dog."]
    assert repo.ensure_label_set("animals", ["cat", "dog"]) == created
    with pytest.raises(ValidationError, match="already exists with other labels"):
        repo.ensure_label_set("animals", ["dog", "cat"])
    with pytest.raises(ValidationError, match="already exists with other labels or template"):
        repo.ensure_label_set("animals", ["cat", "dog"], "a drawing of a {}")
    for labels, message in [
        (["cat"], "needs 2 to 1000 labels"),
        (["cat", "cat", "dog"], "repeated: cat"),
        ("cat,dog", "must be a list of strings"),
        (["cat", 7], "label must be text, got int"),
        (["cat", "d" * 10_000_000], "too long"),
    ]:
        with pytest.raises(ValidationError, match=message):
            repo.ensure_label_set("other", labels)
    for template in ["no placeholder", "{} and {}", "{name}", "x" * 300]:
        with pytest.raises(ValidationError, match="prompt template"):
            repo.ensure_label_set("other", ["a", "b"], template)
    with pytest.raises(ValidationError, match="label set name is too long"):
        repo.ensure_label_set("n" * 10_000_000, ["a", "b"])
    assert count(repo, LabelSet) == 1


def test_samples_are_unique_per_image_label_set_and_attack(repo, png):
    repo.ensure_label_set("animals", ["cat", "dog"])
    sha = repo.store_image(png(1)).sha256
    clean = repo.add_sample(sha, "animals")
    attacked = repo.add_sample(sha, "animals", {"text": "dog", "size": 0.3, "pos": [1, 2]})
    same = repo.add_sample(sha, "animals", {"pos": [1, 2], "size": 0.3, "text": "dog"})  # key order differs
    assert clean.attack is None and clean.id != attacked.id and same.id == attacked.id
    assert count(repo, Sample) == 2
    with pytest.raises(NotFoundError, match="unknown image"):
        repo.add_sample("0" * 64, "animals")
    with pytest.raises(NotFoundError, match="unknown label set"):
        repo.add_sample(sha, "plants")
    with pytest.raises(ValidationError, match="image hash must be 64 lowercase hex"):
        repo.add_sample("../../etc/passwd", "animals")
    with pytest.raises(ValidationError, match="plain JSON"):
        repo.add_sample(sha, "animals", {"text": {1, 2}})
    with pytest.raises(ValidationError, match="too large"):
        repo.add_sample(sha, "animals", {"text": "x" * 10_000_000})
    with pytest.raises(ValidationError, match="must be a dict"):
        repo.add_sample(sha, "animals", ["text"])
    assert count(repo, Sample) == 2


def test_annotators(repo):
    a = repo.ensure_annotator("ann", hf_username="ann-hf")
    assert repo.ensure_annotator("ann") == a
    assert repo.ensure_annotator("ann", hf_username="ann-new").hf_username == "ann-new"
    assert a.trust == 1.0 and len(a.pseudonym) == 32 and a.pseudonym != "ann"
    with pytest.raises(ValidationError, match="handle is too long"):
        repo.ensure_annotator("h" * 10_000_000)
    with pytest.raises(ValidationError, match="handle must be text"):
        repo.ensure_annotator(42)
    with pytest.raises(NotFoundError):
        repo.get_annotator("nobody")
