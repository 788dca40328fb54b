"""The receiver protocol, and open_receivers(): the backends a job's tracking events are written to.

A receiver takes what the server's job process has already checked and
deduplicated (the events of a site, the global metrics of a round, the final
model) and writes it to one tracking backend. Every backend failure becomes a
JobError, so the caller can refuse the batch and the site sends it again;
receivers are written so that such a resend adds nothing twice where the
backend allows it. This module imports neither mlflow nor tensorboardX at
import time: the job process pays for them only when it opens the receivers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from fedsec.errors import JobError
from fedsec.tracking.events import Event

log = logging.getLogger(__name__)

EMBEDDED_DIR = "mlflow"  # workspace / EMBEDDED_DIR: the embedded MLflow store
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "artifacts"
TENSORBOARD_DIR = "tensorboard"  # workspace / TENSORBOARD_DIR / <site> and / "server"


class Receiver(Protocol):
    """Where a job's tracking data goes. Methods are called from any thread; each receiver serialises them."""

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        """Write a site's events (already checked and deduplicated). Raises JobError when the backend fails."""
        ...

    def global_metrics(self, current_round: int, metrics: Mapping[str, float]) -> None:
        """Write the server's aggregated metrics of a round. Raises JobError when the backend fails."""
        ...

    def final_model(self, path: Path | None) -> None:
        """Keep the final global model file (encrypted for HE jobs), or note there is none. Raises JobError."""
        ...

    def close(self) -> None:
        """End the runs and release the writers. Never raises: a failure here is logged as a warning."""
        ...


def embedded_mlflow_uri(workspace: Path) -> str:
    """The tracking URI of the embedded store of a workspace: sqlite:////abs/workspace/mlflow/mlflow.db."""
    return f"sqlite:///{(workspace / EMBEDDED_DIR / EMBEDDED_DB).resolve()}"


def open_receivers(job_id: str, job_name: str, workspace: Path, mlflow_uri: str, tensorboard: bool) -> list[Receiver]:
    """The receivers of a job: MLflow always, TensorBoard event files when asked.

    mlflow_uri "" means the embedded store in `workspace / "mlflow"` (SQLite, artifacts beside it). Opening
    for a job id that was opened before reuses its runs. Logs one line saying how to look at the results.
    Raises JobError when a backend cannot be reached or set up (a receiver already opened is closed first).
    """
    from fedsec.tracking.receivers.mlflow_receiver import MlflowReceiver

    if mlflow_uri:
        uri, artifact_location = mlflow_uri, None
    else:
        root = (workspace / EMBEDDED_DIR).resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"mlflow: cannot make the embedded store {root}: {exc}") from exc
        uri, artifact_location = embedded_mlflow_uri(workspace), (root / EMBEDDED_ARTIFACTS).as_uri()
    mlflow = MlflowReceiver(uri, job_id, job_name, artifact_location=artifact_location)
    receivers: list[Receiver] = [mlflow]
    hints = [mlflow.how_to_open()]
    if tensorboard:
        from fedsec.tracking.receivers.tensorboard import TensorBoardReceiver

        try:
            board = TensorBoardReceiver(workspace / TENSORBOARD_DIR)
        except BaseException:
            mlflow.close()
            raise
        receivers.append(board)
        hints.append(board.how_to_open())
    log.info("tracking job_id=%s: %s", job_id, "; ".join(hints))
    return receivers
