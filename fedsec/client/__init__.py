"""The Client API for training scripts: init(), receive(), send(), is_running().

A training script runs in its own process on a site; it talks only to its
site's parent process, over a Unix socket the parent names in the
environment. Models travel as numpy arrays (see torch_io for PyTorch).
"""

from fedsec.client.api import (
    FLModel,
    ParamsType,
    dataset_path,
    init,
    is_running,
    job_id,
    receive,
    send,
    site_name,
    strategy_settings,
)

__all__ = [
    "FLModel",
    "ParamsType",
    "dataset_path",
    "init",
    "is_running",
    "job_id",
    "receive",
    "send",
    "site_name",
    "strategy_settings",
]

# fedsec.client.tracking.SummaryWriter is imported from its module, so `import fedsec.client` stays light.
