"""The trainer on ZeroGPU hardware (``POCLIP_TRAINER=zerogpu``): a retrain runs when an admin clicks Retrain.

ZeroGPU lends a GPU only to a call of a ``spaces.GPU`` function made while serving a request (:mod:`poclip.zerogpu`),
so nothing can train in the background. Here the click queues the run and executes it at once, in the serving
process: the pairs are read from the store here, the model work (:meth:`~poclip.app.worker.Trainer.compute`:
training, then the gate's evaluations) is one GPU call whose duration follows the pair count, and what comes
back (the head's tensors on the CPU and the gate's figures) is saved, gated and registered here, after which the
app serves the new head if it was promoted. Off ZeroGPU the same class trains in the request's thread, on
whatever device the app uses: that is how it is tested.

The call's worker is a fork of the app: it reads the trained-from head named by the app (its copy may be older),
writes the pictures' activations to the on-disk cache (so the next retrain's call is shorter), and never touches
the store. Progress during the call is not shown step by step: the run's row shows its phase and heartbeat.
"""

from __future__ import annotations

import logging

from annotation_db import Repository, RunInfo
from poclip import zerogpu
from poclip.app.live import LiveHead
from poclip.app.retrain.data import TrainingData
from poclip.app.retrain.heartbeat import Heartbeat
from poclip.app.worker import Candidate, Trainer
from poclip.engine.config import TrainConfig
from poclip.engine.models import ClipEncoder
from poclip.errors import UserError
from poclip.settings import Settings

log = logging.getLogger(__name__)


def require_zerogpu() -> None:
    """Refuse ``POCLIP_TRAINER=zerogpu`` off ZeroGPU hardware: there its retrain would train inside the serving
    process, in a visitor's request, slowing every other visitor."""
    if not zerogpu.detected():
        raise UserError(f"POCLIP_TRAINER=zerogpu is for ZeroGPU hardware ({zerogpu.ZERO_GPU_ENV} is not set here): "
                        "use thread (a child process trains) or off (a `python -m poclip worker` trains).")


class ZeroGpuTrainer(Trainer):
    """Executes a run on request (:meth:`execute`), its model work in one ZeroGPU call.

    Args:
        settings: ``POCLIP_ZEROGPU_MAX_S`` caps the call's duration; repo, encoder, live_head: the app's.
    """

    def __init__(self, settings: Settings, repo: Repository, encoder: ClipEncoder, live_head: LiveHead) -> None:
        super().__init__(settings, repo, encoder, live_head)
        self.max_s = settings.zerogpu_max_s
        self.warm = False  # a call in this process has filled the replay pictures' cache
        self._gpu_compute = zerogpu.gpu_task(self._compute_alone, self.call_seconds)

    def call_seconds(self, data: TrainingData, config: TrainConfig, start: tuple[str, str | None]) -> int:
        """The duration the call asks for (:func:`poclip.zerogpu.retrain_seconds`): every picture (the pairs'
        attacked and clean ones, the clean set's, the gate's with each family) counted as uncached until a call of
        this process has cached them, then only the crowd's."""
        gate = self.settings.gate_eval_n * (len(self.settings.gate_families) + 1)
        uncached = 2 * data.judged_pairs if self.warm else 2 * len(data.prefs) + len(data.clean) + gate
        return zerogpu.retrain_seconds(len(data.prefs), config.epochs, uncached, self.max_s)

    def _compute_alone(self, data: TrainingData, config: TrainConfig, start: tuple[str, str | None]) -> Candidate:
        # The GPU call's body: arguments and result are pickled across the fork, so no callbacks cross it.
        return self.compute(data, config, start)

    def compute_run(self, data: TrainingData, config: TrainConfig, start: tuple[str, str | None],
                    beat: Heartbeat) -> Candidate:
        seconds = self.call_seconds(data, config, start)
        log.info("retrain: one GPU call of up to %s s for %s pairs", seconds, len(data.prefs))
        self._phase("training", beat)
        made = self._gpu_compute(data, config, start)
        self.warm = True
        self._phase("evaluating", beat)
        return made

    def execute(self, run_id: int) -> RunInfo | None:
        """Execute queued run ``run_id`` now, in this thread; returns it once it is over (None when another
        trainer had taken it)."""
        return self.run_pending(run_id)
