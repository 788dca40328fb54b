"""Where the server's job process writes a job's tracking data: MLflow runs and TensorBoard event files.

Used by the server's job process only; the only home of mlflow and tensorboardX
in fedsec. Importing this package loads neither: open_receivers() imports the
receiver it opens.
"""

from __future__ import annotations

from fedsec.tracking.receivers.base import Receiver, embedded_mlflow_uri, open_receivers

__all__ = ["Receiver", "embedded_mlflow_uri", "open_receivers"]
