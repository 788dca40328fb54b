"""The receiver protocol, and open_receivers(): the backends a job's tracking events are written to.

A receiver takes what the server's job process has already checked and
deduplicated (the events of a site, the metrics of a round, global and per
site, the job's settings, the final model) and writes it to one tracking
backend. A round's metrics keep their names in every run: the job's own run
gets the aggregate, each site's run the site's own value, so one chart of a
name shows the global curve beside every site's. Every backend failure becomes a
JobError, so the caller can refuse the batch and the site sends it again;
receivers are written so that such a resend adds nothing twice where the
backend allows it. This module imports neither mlflow nor tensorboardX at
import time: the job process pays for them only when it opens the receivers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from fedsec.tracking.backends import Backend
from fedsec.tracking.events import Event
from fedsec.tracking.receivers.store import embedded_uri, prepare_embedded_store, shown

log = logging.getLogger(__name__)

SiteMetrics = Mapping[str, Mapping[str, float]]  # site -> its metrics of a round, under the global metrics' names

TENSORBOARD_DIR = "tensorboard"  # tracking_dir / TENSORBOARD_DIR / <site> and / "server"


class RunEnd(enum.Enum):
    """How a job's runs end: its workflow completed, failed, or was stopped (aborted, or the server stopped)."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Receiver(Protocol):
    """Where a job's tracking data goes. Methods are called from any thread; each receiver serialises them."""

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        """Write a site's events (already checked and deduplicated). Raises JobError when the backend fails."""
        ...

    def global_metrics(
        self,
        current_round: int,
        metrics: Mapping[str, float],
        sites: SiteMetrics | None = None,
        *,
        stamp: float | None = None,
    ) -> None:
        """Write a round's metrics at step current_round: the server's aggregate (the job's own run) and, under
        the same names, each site's value (the site's run). Raises JobError when the backend fails.

        stamp: the points' time (seconds since the epoch; None: now). The tracker gives each round one, kept
        with it until written, so a round written again after a crash is the same points, which a backend
        that keys points by time (MLflow) stores once."""
        ...

    def job_params(self, params: Mapping[str, str]) -> None:
        """Write the job's settings as params of the job's own run (a changed value is kept as MLflow allows).

        Raises JobError when the backend fails.
        """
        ...

    def final_model(self, path: Path | None) -> None:
        """Keep the final global model file (encrypted for HE jobs), or note there is none. Raises JobError."""
        ...

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        """End the runs as end and release the writers. Never raises: a failure here is logged as a warning."""
        ...


def embedded_mlflow_uri(tracking_dir: Path) -> str:
    """The tracking URI of the embedded store of a tracking folder: sqlite:////abs/<tracking_dir>/mlflow/mlflow.db."""
    return embedded_uri(tracking_dir)


def open_receivers(
    job_id: str, job_name: str, tracking_dir: Path, backend: Backend, tensorboard: bool, *, user: str = ""
) -> list[Receiver]:
    """The receivers of a job: MLflow always (at backend), TensorBoard event files under tracking_dir when asked.

    user: who submitted the job, the MLflow runs' user ("": the one recorded when the runs were made, if any).

    The embedded backend is the store in tracking_dir / "mlflow", set up first (prepare_embedded_store). Opening
    for a job id that was opened before reuses its runs. Logs one line saying how to look at the results, naming
    no server path. Raises JobError when a backend cannot be reached or set up (one already opened is closed).
    """
    from fedsec.tracking.receivers.mlflow_receiver import MlflowReceiver

    if backend.embedded:
        store = prepare_embedded_store(tracking_dir)
        mlflow = MlflowReceiver(
            store.uri,
            job_id,
            job_name,
            artifact_location=store.artifact_location,
            label=f"mlflow ({shown(tracking_dir)})",
            user=user,
            shown=shown(tracking_dir),
        )
    else:
        mlflow = MlflowReceiver(backend.mlflow_uri, job_id, job_name, user=user)
    receivers: list[Receiver] = [mlflow]
    hints = [f"backend {backend.name}: {mlflow.how_to_open()}"]
    if tensorboard:
        from fedsec.tracking.receivers.tensorboard import TensorBoardReceiver

        try:
            board = TensorBoardReceiver(tracking_dir / TENSORBOARD_DIR, label=f"tracking/{TENSORBOARD_DIR}")
        except BaseException:
            mlflow.close(RunEnd.FAILED)
            raise
        receivers.append(board)
        hints.append(board.how_to_open())
    log.info("tracking job_id=%s: %s", job_id, "; ".join(hints))
    return receivers
