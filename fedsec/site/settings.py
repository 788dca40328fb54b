"""The site operator's own settings: local/site_settings.yml (optional, not signed).

The operator of a site, not the project admin, owns this file: which data
sets the site's jobs may read, and how job processes are isolated::

    datasets:                 # name -> absolute path, bound read-only into each job's sandbox
      cifar10: /data/cifar10
    isolation: auto           # auto (bubblewrap when installed) | bwrap (required) | none (opt out)
    job_retention_days: 30    # job folders (<kit>/jobs/<job_id>: the script's log, its work/) older than this
                              # are deleted, at the site's start and then daily; never a running job's
    warm_launcher: false      # keep one job process ready (its own sandbox, Python and the ML framework
                              # imported) for the next job: its script starts in well under a second, at the
                              # cost of that idle process's memory (fedsec.site.launcher)

It is not covered by the kit's signature, so it is trusted only as far as its
file permissions go: load_site_settings() refuses it unless it is a regular
file owned by the site's user with mode 0600 or 0644. Unknown keys, relative
paths, missing paths and paths that overlap the kit are errors naming the
file and the key. A missing file means the defaults (no data sets, auto).
This module reads YAML with the safe loader and never runs anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError

SETTINGS_FILE = "local/site_settings.yml"


class Isolation(enum.Enum):
    """How a site isolates its job processes."""

    AUTO = "auto"  # bubblewrap when installed; otherwise a warning per job
    BWRAP = "bwrap"  # bubblewrap or the job is refused
    NONE = "none"  # the operator opted out: jobs run with the site's own rights


@dataclass(frozen=True)
class SiteSettings:
    """What the site operator chose; the defaults when the file is absent."""

    datasets: dict[str, str] = field(default_factory=dict)  # name -> absolute path (resolved)
    isolation: Isolation = Isolation.AUTO
    job_retention_days: int = limits.DEFAULT_JOB_RETENTION_DAYS
    warm_launcher: bool = False  # off by default: the ready process costs its memory while the site is idle


def load_site_settings(kit_root: Path) -> SiteSettings:
    """Read <kit>/local/site_settings.yml, or the defaults when it does not exist.

    Raises ConfigError naming the file and the problem (permissions, owner,
    unknown key, a bad data set name or path).
    """
    path = kit_root / SETTINGS_FILE
    where = f"site settings {path}"
    if not _fs.check_operator_file(path, where, others_may_read=True):
        return SiteSettings()
    raw = _schema.load_yaml(path, "site settings")
    try:
        settings = _schema.build(SiteSettings, {} if raw is None else raw, "")
        days = settings.job_retention_days
        if not 1 <= days <= limits.MAX_JOB_RETENTION_DAYS:
            raise ConfigError(
                f"job_retention_days: {days} is not a number of days in 1..{limits.MAX_JOB_RETENTION_DAYS}"
            )
        return SiteSettings(
            datasets=_check_datasets(settings.datasets, kit_root),
            isolation=settings.isolation,
            job_retention_days=days,
            warm_launcher=settings.warm_launcher,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check_datasets(datasets: dict[str, str], kit_root: Path) -> dict[str, str]:
    if len(datasets) > limits.MAX_SITE_DATASETS:
        raise ConfigError(f"datasets: more than {limits.MAX_SITE_DATASETS} entries")
    kit = kit_root.resolve()
    checked: dict[str, str] = {}
    for name, text in datasets.items():
        at = f"datasets.{name}"
        _fs.check_name("data set", name)
        if len(text) > limits.MAX_DATASET_PATH or not text.startswith("/"):
            raise ConfigError(f"{at}: must be an absolute path of at most {limits.MAX_DATASET_PATH} characters")
        path = Path(text).resolve()
        if not path.exists():
            raise ConfigError(f"{at}: {text} does not exist")
        if path == kit or kit in path.parents or path in kit.parents:
            raise ConfigError(f"{at}: {text} overlaps the site's kit {kit}; jobs must never see the kit")
        checked[name] = str(path)
    return checked
