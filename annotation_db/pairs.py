"""From votes to training pairs: trust from gold items, majority per sample, agreement ratio."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, aliased

from annotation_db.errors import NotFoundError
from annotation_db.judgments import JudgmentsMixin
from annotation_db.models import (
    LABEL_SET_NAME_MAX,
    Annotator,
    Image,
    Judgment,
    JudgmentKind,
    LabelSet,
    ModelVersion,
    Sample,
)
from annotation_db.validation import check_id, check_optional_text


@dataclass(frozen=True)
class TrainingPair:
    """One preference pair for the trainer, with what it needs to re-render the attacked image."""

    sample_id: int
    image_sha256: str
    image_path: Path  # absolute
    attack: dict[str, Any] | None  # None: the clean image
    label_set: str
    labels: tuple[str, ...]
    prompt_template: str
    chosen: str
    rejected: str
    agreement: float  # share of counted votes that chose ``chosen``
    votes: int  # counted votes (trusted people and the synthetic generator; not the gold answer)
    is_gold: bool  # chosen/rejected come from the sample's gold answer
    people: int  # counted votes from people (``votes`` less the synthetic generator's)

    @property
    def from_people(self) -> bool:
        """A *crowd pair*: the consensus of people's counted votes, not a gold answer nor synthetic votes alone."""
        return not self.is_gold and self.people > 0


@dataclass(frozen=True)
class PairBatch:
    """Training pairs and the watermark to store on the version trained from them."""

    pairs: list[TrainingPair]
    watermark: int | None  # highest judgment id considered; pass to :meth:`register_version`
    skipped: int  # samples with votes but no clear majority (tie or agreement below the minimum)
    excluded_annotators: list[str] = field(default_factory=list)  # handles below the trust threshold
    # The held-out items' consensus pairs (never trained on; the gate scores crowd agreement on them).
    held_out: list[TrainingPair] = field(default_factory=list)


@dataclass(frozen=True)
class CrowdGrowth:
    """How many crowd pairs (:attr:`TrainingPair.from_people`) the labels after a watermark added.

    Attributes:
        pairs: crowd pairs gained; negative when more items lost their majority than found one.
        complete: False when more labels arrived than were read; ``pairs`` then counts what the first of them
            added, a lower bound.
    """

    pairs: int
    complete: bool


@dataclass(frozen=True)
class _Vote:
    sample_id: int
    chosen: str
    rejected: str
    kind: JudgmentKind
    trusted: bool


class PairsMixin(JudgmentsMixin):
    """Trust scores and training pairs."""

    def refresh_trust(self) -> dict[str, float]:
        """Recompute every annotator's trust from scratch from their human judgments on gold items (repair).

        trust = (correct + prior_correct) / (seen + prior_seen), where ``seen`` counts their (not undone)
        judgments on samples that have a gold answer and ``correct`` those that chose the gold label. The
        write path keeps these figures current (see ``record_judgment``); this is for an administrator after a
        manual change to the tables. O(judgments); rows are updated one at a time in ascending id order,
        the lock order every writer follows.

        Returns:
            handle -> trust, for every annotator.
        """
        with self.db.writing() as s:
            gold = aliased(Judgment)
            counts = {
                aid: (seen, int(correct or 0))
                for aid, seen, correct in s.execute(
                    select(
                        Judgment.annotator_id,
                        func.count(),
                        func.sum(case((Judgment.chosen == gold.chosen, 1), else_=0)),
                    )
                    .join(gold, gold.sample_id == Judgment.sample_id)
                    .where(
                        gold.kind == JudgmentKind.GOLD,
                        gold.undone_at.is_(None),
                        Judgment.kind == JudgmentKind.HUMAN,
                        Judgment.undone_at.is_(None),
                    )
                    .group_by(Judgment.annotator_id)
                )
            }
            prior_c, prior_n = self.config.trust_prior_correct, self.config.trust_prior_seen
            for aid in s.scalars(select(Annotator.id).order_by(Annotator.id)).all():
                seen, correct = counts.get(aid, (0, 0))
                s.execute(
                    update(Annotator)
                    .where(Annotator.id == aid)
                    .values(gold_seen=seen, gold_correct=correct, trust=(correct + prior_c) / (seen + prior_n))
                )
            return {handle: trust for handle, trust in s.execute(select(Annotator.handle, Annotator.trust))}

    def training_pairs(self, since_version: int | None = None, *, label_set: str | None = None,
                       held_out: Callable[[TrainingPair], bool] | None = None) -> PairBatch:
        """The training pairs: one per sample with a clear preference.

        Per sample: if it has a gold answer, that is the pair; otherwise the majority of counted votes on the
        chosen label (``rejected`` is the most common rejected label among those votes). Counted votes are
        not undone, not gold, not from annotators whose trust is below ``min_trust`` or who answered fewer than
        ``min_gold_seen`` gold items, and no annotator's votes decide more than ``max_annotator_share`` of the
        batch's samples (their later votes, by judgment id, are left out).
        agreement = votes for the chosen label / counted votes; a sample is skipped when the top chosen
        label is tied or its agreement is below ``min_agreement``.

        Args:
            since_version: only samples that received a judgment after the version's watermark (its training
                data); their majority is still computed over all of their votes. None: every sample.
            label_set: only samples of this label set.
            held_out: which items are held out of training (a keyed hash of the item, say). Their pairs go to
                the batch's ``held_out`` instead of ``pairs``; items with a gold answer are never held out (gold
                scores the annotators), so a held-out pair is always the trusted majority. One call per
                decided sample: the batch stays O(judgments considered).
        """
        if since_version is not None:
            since_version = check_id(since_version, "model version id")
        label_set = check_optional_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        with self.db.reading() as s:
            watermark = s.scalar(select(func.max(Judgment.id)))
            floor = 0 if since_version is None else self._watermark_of(s, since_version)
            excluded = list(
                s.scalars(
                    select(Annotator.handle)
                    .where(Annotator.trust < self.config.min_trust)
                    .order_by(Annotator.handle)
                )
            )
            if watermark is None:
                return PairBatch([], None, 0, excluded)
            touched = select(Judgment.sample_id).where(Judgment.id > floor, Judgment.id <= watermark)
            pairs, skipped = self._aggregate(s, touched, watermark, label_set)
            if held_out is None:
                return PairBatch(pairs, watermark, skipped, excluded)
            kept, held = [], []
            for pair in pairs:
                (held if not pair.is_gold and held_out(pair) else kept).append(pair)
            return PairBatch(kept, watermark, skipped, excluded, held)

    def crowd_growth(self, watermark: int, limit: int) -> CrowdGrowth:
        """The crowd pairs that people's labels after judgment ``watermark`` added (or took away).

        The items those labels touched are decided twice by the rules of :meth:`training_pairs`, on their votes
        up to ``watermark`` and on all of them; the growth is the difference in crowd pairs. Held-out items count
        like any other. Items nobody labelled since keep their decision (a trust that moved, or an older label
        undone since, shows in the next run's full count), and the share cap applies among the touched items.

        Reads at most ``limit`` labels after the watermark: O(limit + the votes on their items), whatever the
        size of the store.
        """
        with self.db.reading() as s:
            newest = s.scalar(select(func.max(Judgment.id))) or 0
            if newest <= watermark:
                return CrowdGrowth(0, True)
            people = (Judgment.id > watermark, Judgment.kind == JudgmentKind.HUMAN)
            beyond = s.scalar(select(Judgment.id).where(*people).order_by(Judgment.id).offset(limit).limit(1))
            upto = newest if beyond is None else beyond - 1
            touched = select(Judgment.sample_id).where(*people, Judgment.id <= upto)
            after = sum(pair.from_people for pair in self._aggregate(s, touched, upto, None)[0])
            before = sum(pair.from_people for pair in self._aggregate(s, touched, watermark, None)[0])
            return CrowdGrowth(after - before, beyond is None)

    def version_watermark(self, version_id: int) -> int:
        """The id of the last judgment that version ``version_id`` was trained on (0: none)."""
        version_id = check_id(version_id, "model version id")
        with self.db.reading() as s:
            return self._watermark_of(s, version_id)

    def _watermark_of(self, s: Session, version_id: int) -> int:
        version = s.get(ModelVersion, version_id)
        if version is None:
            raise NotFoundError(f"unknown model version {version_id}")
        if version.judgment_watermark is not None:
            return version.judgment_watermark
        # A version registered without a watermark: everything recorded before it was created.
        return s.scalar(select(func.max(Judgment.id)).where(Judgment.created_at <= version.created_at)) or 0

    def _aggregate(
        self, s: Session, sample_ids: Any, watermark: int, label_set: str | None
    ) -> tuple[list[TrainingPair], int]:
        vote_query = (
            select(
                Judgment.sample_id,
                Judgment.chosen,
                Judgment.rejected,
                Judgment.kind,
                Judgment.annotator_id,
                Annotator.trust,
                Annotator.gold_seen,
            )
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .where(Judgment.undone_at.is_(None), Judgment.id <= watermark, Judgment.sample_id.in_(sample_ids))
            .order_by(Judgment.id)
        )
        rows = s.execute(vote_query).all()
        n_samples = len({row.sample_id for row in rows})
        # The share cap: one annotator's votes count on at most this many of the batch's samples. Votes on gold
        # items decide nothing (the gold answer is the pair), so they do not use it up.
        cap = max(1, int(self.config.max_annotator_share * n_samples)) if self.config.max_annotator_share < 1 else None
        gold_samples = {row.sample_id for row in rows if row.kind is JudgmentKind.GOLD}
        used: Counter[int] = Counter()
        votes: dict[int, list[_Vote]] = defaultdict(list)
        for sample_id, chosen, rejected, kind, annotator_id, trust, gold_seen in rows:
            trusted = trust >= self.config.min_trust
            if kind is JudgmentKind.HUMAN:
                trusted = trusted and gold_seen >= self.config.min_gold_seen
                if trusted and cap is not None and sample_id not in gold_samples:
                    used[annotator_id] += 1
                    trusted = used[annotator_id] <= cap
            votes[sample_id].append(_Vote(sample_id, chosen, rejected, kind, trusted))
        if not votes:
            return [], 0

        info_query = (
            select(
                Sample.id,
                Sample.attack,
                Image.sha256,
                Image.path,
                LabelSet.name,
                LabelSet.labels,
                LabelSet.prompt_template,
            )
            .join(Image, Image.sha256 == Sample.image_sha256)
            .join(LabelSet, LabelSet.id == Sample.label_set_id)
            .where(Sample.id.in_(sample_ids))
            .order_by(Sample.id)
        )
        if label_set is not None:
            info_query = info_query.where(LabelSet.name == label_set)

        pairs: list[TrainingPair] = []
        skipped = 0
        for sample_id, attack, sha, path, set_name, labels, template in s.execute(info_query):
            decided = self._decide(votes.get(sample_id, []))
            if decided is None:
                if sample_id in votes:
                    skipped += 1
                continue
            chosen, rejected, agreement, n_votes, is_gold, people = decided
            pairs.append(
                TrainingPair(
                    sample_id,
                    sha,
                    self.data_dir / path,
                    attack,
                    set_name,
                    tuple(labels),
                    template,
                    chosen,
                    rejected,
                    agreement,
                    n_votes,
                    is_gold,
                    people,
                )
            )
        return pairs, skipped

    def _decide(self, votes: list[_Vote]) -> tuple[str, str, float, int, bool, int] | None:
        counted = [v for v in votes if v.kind is not JudgmentKind.GOLD and v.trusted]
        people = sum(v.kind is JudgmentKind.HUMAN for v in counted)
        gold = next((v for v in votes if v.kind is JudgmentKind.GOLD), None)
        chosen_counts = Counter(v.chosen for v in counted)
        if gold is not None:
            agreement = chosen_counts[gold.chosen] / len(counted) if counted else 1.0
            return gold.chosen, gold.rejected, agreement, len(counted), True, people
        if not counted:
            return None
        (top, top_n), *rest = chosen_counts.most_common()
        if rest and rest[0][1] == top_n:
            return None  # tie: no majority
        agreement = top_n / len(counted)
        if agreement < self.config.min_agreement:
            return None
        rejected_counts = Counter(v.rejected for v in counted if v.chosen == top).most_common()
        # Ties among rejected labels: the alphabetically first, so the result does not depend on row order.
        best = rejected_counts[0][1]
        rejected = min(label for label, count in rejected_counts if count == best)
        return top, rejected, agreement, len(counted), False, people
