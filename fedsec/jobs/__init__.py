"""Jobs: the job folder format (meta.yml, app/config.yml), job archives and recipes.

A job is a folder; load_job_folder() validates one, pack()/unpack() turn it into
a deterministic zip and back (extraction treats the archive as hostile), and
FedAvgRecipe writes one from Python. Nothing here imports torch or grpc, or
imports or runs a job's code.
"""

from fedsec.jobs.archive import pack, unpack
from fedsec.jobs.meta import AppConfig, JobMeta, load_job_folder
from fedsec.jobs.recipe import FedAvgRecipe

__all__ = ["AppConfig", "FedAvgRecipe", "JobMeta", "load_job_folder", "pack", "unpack"]
