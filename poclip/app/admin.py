"""Administration: who is an admin, the model versions (promote, roll back), exports, backups, the data summary.

Admin rights come from the configured ``POCLIP_ADMIN_TOKEN`` or, for a Hugging Face login, membership of
``POCLIP_ADMIN_ORG``. A refusal says which of three things went wrong: admin actions are switched off on this
server, nobody signed in, or the token given is not the admin token.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from annotation_db import NAMED_VERSIONS, Repository, VersionInfo
from poclip.app.live import NO_STARTER, LiveHead
from poclip.app.seeding import GOLD_HANDLE, Seeding
from poclip.errors import UserError
from poclip.settings import Settings

SWITCHED_OFF = ("Admin actions are switched off on this server: set POCLIP_ADMIN_TOKEN (or POCLIP_ADMIN_ORG for "
                "Hugging Face logins) and restart the app.")
WRONG_TOKEN = "The admin token is wrong: sign in with the admin token set in POCLIP_ADMIN_TOKEN on the server."
# Where a rollback goes: the version live before the current one (or the id given), or a named version.
ROLLBACK_TARGETS = ("previous", *NAMED_VERSIONS)
# Recorded as who promoted when the admin is not logged in with Hugging Face: the admin token names nobody.
TOKEN_ADMIN = "admin"


def serving(version: VersionInfo) -> dict:
    """What an admin action made live: ``{"active_version": id, "kind": "trained" | "starter" | "base",
    "serving": "version 4" | "starter head" | "base model"}``."""
    return {"active_version": version.id, "kind": version.kind, "serving": version.name}


class AdminRequired(UserError):
    """An admin action attempted without admin rights; the message says why and how to get them."""


class Administration:
    """The maintainer's actions, each checked against the admin rights first.

    Args:
        settings: the admin token and org, the export repository, the backup policy.
        repo: the store.
        live_head: the version serving in this process, brought in step after a promote or rollback.
        seeding: how many gold reference answers there are (left out of the people counts).
    """

    def __init__(self, settings: Settings, repo: Repository, live_head: LiveHead, seeding: Seeding) -> None:
        self.settings = settings
        self.repo = repo
        self.live_head = live_head
        self.seeding = seeding

    # ----- rights -------------------------------------------------------------------------------------------------

    def is_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> bool:
        """Admin = the configured ``POCLIP_ADMIN_TOKEN`` (constant-time compare) or membership of
        ``POCLIP_ADMIN_ORG`` for a logged-in Hugging Face user."""
        expected = self.settings.admin_token
        if expected and token and hmac.compare_digest(token.encode(), expected.encode()):
            return True
        return bool(self.settings.admin_org and hf_orgs and self.settings.admin_org in hf_orgs)

    def require_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> None:
        """Nothing when ``token`` or ``hf_orgs`` give admin rights, else :class:`AdminRequired` saying whether
        admin actions are switched off, the token is wrong, or nobody signed in (and how to)."""
        if self.is_admin(token, hf_orgs):
            return
        admin_token, admin_org = self.settings.admin_token, self.settings.admin_org
        if not admin_token and not admin_org:
            raise AdminRequired(SWITCHED_OFF)
        if token and admin_token:
            raise AdminRequired(WRONG_TOKEN)
        if token:
            raise AdminRequired(f"This server takes no admin token: log in with Hugging Face as a member of "
                                f"{admin_org}.")
        ways = []
        if admin_token:
            ways.append("sign in with the admin token (POCLIP_ADMIN_TOKEN)")
        if admin_org:
            ways.append(f"log in with Hugging Face as a member of {admin_org}")
        raise AdminRequired(f"This action needs admin rights: {' or '.join(ways)}.")

    # ----- versions -------------------------------------------------------------------------------------------------

    def versions(self, limit: int = 50) -> list[VersionInfo]:
        """The newest model versions (id, status, metrics, reason), newest first."""
        return self.repo.list_versions(limit=limit)

    def version(self, version_id: int) -> VersionInfo:
        """One model version, with everything recorded about it."""
        return self.repo.get_version(version_id)

    def promote(self, version_id: int, reason: str = "", *, token: str | None = None,
                hf_orgs: list[str] | None = None, username: str | None = None) -> dict:
        """Make ``version_id`` the active version (admin); this process serves it at once, other replicas and
        the trainer follow the store.

        Args:
            reason: why, recorded with the admin's name and the time and shown in the versions table; required
                (not blank) for a version the promotion gate rejected, which is refused without one.
            username: the admin's Hugging Face name when logged in (else they are recorded as "admin").
        Returns:
            :func:`serving` of the version now live.
        """
        self.require_admin(token, hf_orgs)
        version = self.repo.promote_version(int(version_id), by=username or TOKEN_ADMIN, reason=reason or "")
        self.live_head.sync()
        return serving(version)

    def rollback(self, version_id: int | None = None, to: str = "previous", reason: str = "", *,
                 token: str | None = None, hf_orgs: list[str] | None = None, username: str | None = None) -> dict:
        """Return to an earlier version (admin): ``version_id``, else by ``to``.

        Args:
            version_id: the version to return to (with ``to`` left at "previous").
            to: "previous" (``version_id``, or the version live before the current one), "starter" (the shipped
                starter head) or "base" (the base model, no head). Starter and base are named versions in the
                store, so every replica and the trainer serve them and they outlast a restart.
            reason: why, recorded as for :meth:`promote` (optional).
        Returns:
            :func:`serving` of the version now live.
        """
        self.require_admin(token, hf_orgs)
        if to not in ROLLBACK_TARGETS:
            raise UserError(f"Roll back to one of {', '.join(ROLLBACK_TARGETS)}, not {to!r}.")
        if version_id and to != "previous":
            raise UserError(f"Give a version id or a named version ({to}) to roll back to, not both.")
        by = username or TOKEN_ADMIN
        why = f"rolled back: {reason.strip()}" if reason and reason.strip() else "rolled back"
        if to == "previous":
            version = self.repo.rollback_version(int(version_id) if version_id else None, why, by=by)
        else:
            if to == "starter" and self.live_head.fallback is None:
                raise UserError(f"There is no starter head to roll back to: {NO_STARTER}.")
            version = self.repo.rollback_to_named(to, self.live_head.encoder.spec, why, by=by)
        self.live_head.sync()
        return serving(version)

    # ----- exports and backups ----------------------------------------------------------------------------------------

    def backup(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        """Snapshot the database now (admin); returns the snapshot's path."""
        self.require_admin(token, hf_orgs)
        from annotation_db import take_snapshot

        self.repo.db.check_file()  # a file deleted or replaced under the app is no database to snapshot

        return str(take_snapshot(self.settings, keep=self.settings.backup_keep))

    def export_parquet(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        """Export all pairs as a Hugging Face dataset, saved as one parquet file (admin); returns its path."""
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, save_dataset

        dataset = export_dataset(self.repo)
        out = self.settings.data_dir / "exports" / f"poclip-pairs-{secrets.token_hex(4)}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_dataset(dataset, out, parquet=True)
        return str(out)

    def push_to_hub(self, repo_id: str = "", *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        """Push all pairs to the Hub dataset ``repo_id`` (or ``POCLIP_EXPORT_REPO``) (admin); returns its name."""
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, push_dataset

        target = repo_id or self.settings.export_repo
        if not target:
            raise UserError("Name the Hub dataset repository (user/name) or set POCLIP_EXPORT_REPO.")
        push_dataset(export_dataset(self.repo), target, token=self.settings.hf_token or None)
        return target

    # ----- the data summary ---------------------------------------------------------------------------------------

    def people_counts(self) -> dict[str, int]:
        """The maintained totals with the gold pseudo-annotator taken out; O(1) in the database size.

        Gold reference answers are recorded once per gold item when the items are seeded, so their number is
        known without a query.
        """
        counts = self.repo.counts()
        gold = self.seeding.gold_items
        return {**counts, "gold_items": gold, "judgments": counts["judgments"] - gold,
                "annotators": counts["annotators"] - (1 if gold else 0)}

    def data_summary(self, *, admin: bool = False) -> dict[str, Any]:
        """Counts for everyone; per-annotator figures and the latest judgments only for ``admin``.

        Handles, anonymous ids and trust scores identify people, so the public sees aggregates only.
        """
        counts = self.people_counts()
        summary: dict[str, Any] = {
            "images": counts["images"], "items": counts["samples"], "gold_items": counts["gold_items"],
            "judgments": counts["judgments"], "undone": counts["undone"], "annotators": counts["annotators"],
        }
        if admin:  # the maintainer's dashboard reads everything: O(judgments), on demand only
            s = self.repo.stats()
            summary.update(alpha=s.alpha,
                           per_annotator=[a for a in s.per_annotator if a.handle != GOLD_HANDLE],
                           recent=self.repo.recent_judgments(20))
        return summary
