"""Step 5 of a retrain: the run's record, the candidate registered as a version and promoted or rejected, and
the run finished; every write presents the run's lease.

The lease is what keeps a worker that lost its run (frozen past the heartbeat timeout, then resumed) from
overwriting the next worker's result: the store refuses these writes for a run claimed again since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotation_db import Repository, RunInfo, VersionInfo
from poclip.app.retrain.crowd import Agreement
from poclip.app.retrain.data import TrainingData
from poclip.app.retrain.gate import class_table
from poclip.engine.config import TrainConfig
from poclip.engine.train import TrainResult


def summary(metrics: dict) -> dict:
    """Gate metrics without the per-class breakdown (the record carries that once, as the per-class table)."""
    return {k: v for k, v in metrics.items() if k != "per_class"}


def run_record(candidate: dict, live: dict, base: dict, result: TrainResult, data: TrainingData,
               config: TrainConfig, reason: str, *, crowd: dict[str, Agreement] | None = None,
               table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The metrics a run row and its version keep (the UI and the README read these keys).

    The pair figures: ``pairs`` trained on in all; of them ``judged_pairs`` from judgments (gold answers and
    augmentation included) and ``replay_pairs`` replayed synthetic ones; ``crowd_pairs``, the people's consensus
    pairs the run used, trained and held out (what the schedule counts growth from); ``held_out_pairs`` scored by
    the gate.

    Args:
        candidate, live, base: gate metrics of the candidate, the live model before the run, and the base model.
        result: the engine's training result; data: what it trained on; config: how.
        reason: the gate's verdict in words.
        crowd: crowd agreement of candidate, live and base on the held-out pairs (``crowd_agreement``, each
            ``{k, n, share, low, high}``); table: the gate's rows (``gate_table``).
    """
    return {
        "candidate": summary(candidate), "live_before": summary(live), "base": summary(base),
        "per_class": class_table(candidate, live),
        "train": result.metrics, "pairs": len(data.prefs), "crowd_pairs": data.crowd_pairs,
        "judged_pairs": data.judged_pairs, "replay_pairs": data.replay_pairs, "clean": len(data.clean),
        "epochs": config.epochs, "loss": config.loss,
        "train_seconds": round(result.train_seconds, 2), "embed_seconds": round(result.embed_seconds, 2),
        "gate": reason, "gate_table": table or [], "held_out_pairs": len(data.held_out),
        "crowd_agreement": {name: agreement.as_dict() for name, agreement in (crowd or {}).items()},
    }


def head_file(heads_dir: Path, run: RunInfo) -> Path:
    """Where run ``run`` writes its candidate head (one file per run: a run is claimed once, a retry is a new run)."""
    return heads_dir / f"run{run.id}.safetensors"


def register(repo: Repository, run: RunInfo, backbone: str, head_path: Path, record: dict[str, Any], *,
             parent_id: int | None, watermark: int | None, promote: bool, reason: str) -> VersionInfo:
    """Register the candidate as a version of ``backbone``'s head, then promote it or reject it with ``reason``.

    Returns the version as it ends up (active or rejected). Raises ``RunLostError`` if the run is no longer ours.
    """
    lease = {"run_id": run.id, "lease": run.lease}
    version = repo.register_version(backbone, str(head_path), record, parent_id=parent_id,
                                    judgment_watermark=watermark, **lease)
    if promote:
        return repo.promote_version(version.id, **lease)
    return repo.reject_version(version.id, reason, **lease)


def finish(repo: Repository, run: RunInfo, record: dict[str, Any], version: VersionInfo,
           watermark: int | None) -> RunInfo:
    """Mark the run succeeded with its record, the version it produced and its judgment watermark."""
    return repo.finish_run(run.id, metrics=record, version_id=version.id, lease=run.lease,
                           judgment_watermark=watermark)
