"""Where the server's job process writes a job's tracking data: MLflow runs and TensorBoard event files.

Used by the server's job process only; the only home of mlflow and tensorboardX
in fedsec. Importing this package loads neither: open_receivers() imports the
receiver it opens.
"""

from __future__ import annotations

from fedsec.tracking.receivers.base import Receiver, RunEnd, SiteMetrics, embedded_mlflow_uri, open_receivers
from fedsec.tracking.receivers.store import prepare_embedded_store

__all__ = ["Receiver", "RunEnd", "SiteMetrics", "embedded_mlflow_uri", "open_receivers", "prepare_embedded_store"]
