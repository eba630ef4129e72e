"""The app's back end, free of Gradio: its pieces built from the settings, and the state they share.

:class:`AppService` is the composition root. It holds what every piece shares (settings, encoder, store, live
head, identity, per-address limits) and one object per concept, each in its own module:

- ``comparisons`` (:mod:`poclip.app.compare`): predict and vote on base versus aligned CLIP (or a peer defense,
  ``peers``: :mod:`poclip.app.peers`), and the defense leaderboard;
- ``annotation`` (:mod:`poclip.app.annotation`): items, answers, undo, one's own label count;
- ``seeding`` (:mod:`poclip.app.seeding`): label sets, annotation items and the gold among them;
- ``admin`` (:mod:`poclip.app.admin`): admin rights, versions, promote, rollback, exports, backups, data summary;
- ``training`` (:mod:`poclip.app.training`): queue a retrain and read the trainer's progress from the store;
- ``visitors`` (:mod:`poclip.app.visitors`): who a request acts for, and the per-address limits.

Every method either does its whole job or raises a :class:`UserError` subclass (or an annotation_db
``ValidationError``) with a message meant for the person, before anything is written. Serving never builds
or imports the trainer: ``app.py`` starts it beside the service, and they meet in the store.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from annotation_db import Repository, RepositoryConfig, StorageError, open_repository
from poclip.app.admin import Administration
from poclip.app.annotation import Annotation
from poclip.app.compare import Comparisons
from poclip.app.comparisons import ComparisonStore
from poclip.app.identity import Identity, server_secret
from poclip.app.limits import ClientLimits, Rate
from poclip.app.live import LiveHead
from poclip.app.pair_counts import PairCounts, count_pairs
from poclip.app.peers import PeerDefenses
from poclip.app.seeding import Seeding
from poclip.app.training import TrainingControl
from poclip.app.visitors import Visitors
from poclip.engine.models import ClipEncoder, load_model
from poclip.engine.policy import check_head
from poclip.engine.starter import load_starter
from poclip.settings import Settings
from poclip.world.decode_budget import DECODE_BUDGET


def repository_config(settings: Settings) -> RepositoryConfig:
    """The store's policies from the app's settings (rate limit; pseudonyms salted with the server secret)."""
    rate = Rate.parse(settings.rate_limit, "POCLIP_RATE_LIMIT")  # COUNT/SECONDS, as the per-address limits
    count, window = (rate.count, rate.window_s) if rate is not None else (None, 60.0)
    secret = server_secret(settings.data_dir)
    pseudonym_secret = hmac.new(secret, b"poclip-pseudonym", hashlib.sha256).hexdigest()
    return RepositoryConfig(rate_limit_count=count, rate_limit_window_s=window, pseudonym_secret=pseudonym_secret,
                            min_gold_seen=settings.min_gold_seen, max_annotator_share=settings.max_annotator_share)


def client_limits(settings: Settings) -> ClientLimits:
    """The per-address limits from the app's settings (see :mod:`poclip.app.limits`)."""
    return ClientLimits(Rate.parse(settings.client_rate_limit, "POCLIP_CLIENT_RATE_LIMIT"),
                        Rate.parse(settings.client_new_annotators, "POCLIP_CLIENT_NEW_ANNOTATORS"),
                        settings.proxy_hops,
                        predictions=Rate.parse(settings.client_predictions, "POCLIP_CLIENT_PREDICTIONS"))


class AppService:
    """Everything the UI and the API do, one piece per concept (see the module's docstring).

    Attributes:
        live_head: the aligned version serving predictions (:class:`~poclip.app.live.LiveHead`), owned here;
            the trainer, when this process runs one, is given the same object.
        identity: signs and checks anonymous annotator tokens.
        client_limits: the per-address limits.
    """

    def __init__(self, settings: Settings, encoder: ClipEncoder, repo: Repository) -> None:
        self.settings = settings
        self.encoder = encoder
        self.repo = repo
        # Until a version is promoted, the shipped starter head serves (None: none for this backbone).
        self.live_head = LiveHead(repo, encoder, load_starter(encoder) if settings.starter_head else None)
        secret = server_secret(settings.data_dir)
        self.identity = Identity(secret)
        self.client_limits = client_limits(settings)
        self.visitors = Visitors(self.identity, self.client_limits, repo)
        self.seeding = Seeding(repo, encoder, secret, settings.seed_items, settings.annotate_families)
        self.peers = PeerDefenses(encoder, settings.data_dir / "defenses", settings.peers)
        self.comparisons = Comparisons(encoder, self.live_head, repo, self.visitors, self.seeding,
                                       ComparisonStore(client_share=settings.client_record_share), self.peers)
        self.annotation = Annotation(repo, self.visitors, self.comparisons)
        self.admin = Administration(settings, repo, self.live_head, self.seeding)
        self.training = TrainingControl(repo, self.admin.require_admin)

    @classmethod
    def create(cls, settings: Settings, encoder: ClipEncoder | None = None) -> AppService:
        """Open (restore, migrate) the database, load the model, seed annotation items, load the live head."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The process's uploads: the budget, and each address's share of it.
        DECODE_BUDGET.configure(settings.decode_budget_mp, settings.decode_wait_s, settings.client_decode_share)
        encoder = encoder or load_model(settings.model_spec, settings)
        if settings.head:  # POCLIP_HEAD: refused before anything is opened, whichever process trains
            check_head(encoder, settings.head)
        repo = open_repository(settings, repository_config(settings))
        service = cls(settings, encoder, repo)
        service.seeding.ensure_label_sets()
        service.seeding.seed_items()
        service.live_head.sync()
        service.peers.start()  # in the background: each peer is offered once built
        return service

    def close(self) -> None:
        """Stop following the active version, building peers, the image batchers, and close the store."""
        self.live_head.close()
        self.peers.close()
        self.comparisons.close()
        self.repo.close()

    def model_info(self) -> str:
        """The backbone and the aligned head serving, as one Markdown line."""
        return f"{self.encoder.description} (`{self.encoder.spec}`, {self.encoder.device.type}); aligned head: " \
               f"{self.live_head.current.label}"

    def pair_counts(self) -> PairCounts:
        """Labels, crowd pairs, replay pairs and the retrain threshold: the figures Annotate, Data and ``/status``
        show (:func:`~poclip.app.pair_counts.count_pairs`; bounded whatever the database size). On ZeroGPU no
        retrain is scheduled by count (an admin starts each), so no threshold is shown."""
        every = 0 if self.settings.trainer == "zerogpu" else self.settings.retrain_every_pairs
        return count_pairs(self.repo, every, self.seeding.gold_items)

    def status(self) -> dict[str, Any]:
        """Live model, data counts and the trainer's state, as one JSON-friendly dict.

        ``labels`` (also ``judgments``, its older name), ``crowd_pairs``, ``replay_pairs`` and
        ``next_retrain_after_crowd_pairs`` (None when retrains are not scheduled by count) are
        :meth:`pair_counts`; ``annotators`` counts people only (the gold pseudo-annotator's reference answers
        are ``gold_items``); ``trainer`` is the newest run's progress; ``database`` is ``ok``, or why the store
        cannot be read (its file deleted or replaced under the app), and then the store's figures are None: a
        health check still gets its answer; ``comparisons``: the predictions kept for votes (``kept``) and the
        memory their pictures hold (``mb``). Cheap whatever the database size.
        """
        live = self.live_head.current
        stats = self.comparisons.batcher.stats
        records = self.comparisons.records
        status: dict[str, Any] = {
            "backbone": self.encoder.spec,
            "live_version": live.version.id if live.version else None,
            "live_model": live.label,
            "database": "ok",
            **dict.fromkeys(("labels", "judgments", "gold_items", "annotators", "crowd_pairs", "replay_pairs",
                             "next_retrain_after_crowd_pairs", "trainer")),
            "image_batches": {"batches": stats.batches, "pictures": stats.items, "largest": stats.largest},
            "comparisons": {"kept": len(records), "mb": round(records.n_bytes / 2**20, 1)},
        }
        try:
            counts = self.admin.people_counts()
            pairs = self.pair_counts()
            trainer = self.training.progress().as_status()
        except StorageError as exc:
            return {**status, "database": str(exc)}
        return {**status, "labels": pairs.labels, "judgments": pairs.labels, "gold_items": counts["gold_items"],
                "annotators": counts["annotators"], "crowd_pairs": pairs.crowd_pairs,
                "replay_pairs": pairs.replay_pairs, "next_retrain_after_crowd_pairs": pairs.more_needed,
                "trainer": trainer}
