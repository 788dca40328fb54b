"""Jobs: the job folder format (meta.yml, app/config.yml), job archives and recipes.

A job is a folder; load_job_folder() validates one, pack()/unpack() turn it into
a deterministic zip and back (extraction treats the archive as hostile), and
FedAvgRecipe, FedProxRecipe, FedOptRecipe and ScaffoldRecipe write one from Python. Nothing
here imports torch or grpc, or imports or runs a job's code.
"""

from fedsec.jobs.archive import pack, unpack
from fedsec.jobs.meta import AppConfig, JobMeta, load_job_folder

# FedAvgRecipe needs numpy: it is imported on first use, so the server and site
# parent processes (which use only the folder format and archives) stay light.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from fedsec.jobs.recipe import FedAvgRecipe, FedOptRecipe, FedProxRecipe, ScaffoldRecipe

_RECIPES = ("FedAvgRecipe", "FedOptRecipe", "FedProxRecipe", "ScaffoldRecipe")


def __getattr__(name: str) -> object:
    if name in _RECIPES:
        from fedsec.jobs import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'fedsec.jobs' has no attribute {name!r}")


__all__ = [
    "AppConfig",
    "FedAvgRecipe",
    "FedOptRecipe",
    "FedProxRecipe",
    "JobMeta",
    "ScaffoldRecipe",
    "load_job_folder",
    "pack",
    "unpack",
]
