"""The retrain pipeline, one module per step; :class:`poclip.app.worker.Trainer` runs them in order.

1. :mod:`.data`: the crowd's pairs, their text-invariance augmentation, replayed synthetic pairs and clean pictures.
2. :mod:`.training`: the run's training config and the engine's ``train_head``.
3. :mod:`.evaluation`: the gate's held-out pictures and the metrics of a policy on them; :mod:`.crowd`: the
   held-out crowd items (keyed split) and a policy's crowd agreement on them, with its Wilson interval.
4. :mod:`.gate`: the promotion rule, its table and the per-class table (pure functions).
5. :mod:`.registration`: the run's record, the version registered and promoted or rejected, the run finished.

Around them: :mod:`.loop` (the trainer's loop: follow the live head, schedule, execute, back up), :mod:`.schedule`
(when to queue a run, backoff after failures) and :mod:`.heartbeat` (progress written to the run's row while it
executes, the lease check, and each phase's wall and CPU seconds).
"""
