"""Battles: the two models each Compare vote saw, counted for the defense leaderboard."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from annotation_db.models import Battle, Judgment
from annotation_db.store import StoreBase


@dataclass(frozen=True)
class BattleCount:
    """How many votes (not undone) saw ``left`` against ``right`` and said ``verdict`` (left, right, both,
    neither: which side was right)."""

    left: str
    right: str
    verdict: str
    count: int


class BattlesMixin(StoreBase):
    """Read the battles (written with their vote by ``record_upload_judgment``)."""

    def battle_counts(self, *, blind: bool = True) -> list[BattleCount]:
        """Votes per (left model, right model, verdict): blind ones (arena mode) by default, else the named.

        One grouped query over the battles' index: its size is the number of distinct model pairs and verdicts,
        whatever the number of votes.
        """
        query = (
            select(Battle.left_model, Battle.right_model, Judgment.said_right, func.count())
            .join(Judgment, Judgment.id == Battle.judgment_id)
            .where(Battle.blind.is_(blind), Judgment.undone_at.is_(None))
            .group_by(Battle.left_model, Battle.right_model, Judgment.said_right)
            .order_by(Battle.left_model, Battle.right_model, Judgment.said_right)
        )
        with self.db.reading() as s:
            return [BattleCount(left, right, verdict.value, int(n)) for left, right, verdict, n in s.execute(query)]
