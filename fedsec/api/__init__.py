"""The admin Python API: Session, over the server's admin port with an admin kit; run_recipe() on top of it."""

from fedsec.api.progress import RoundPrinter
from fedsec.api.session import JobInfo, Session, SiteWait

# run_recipe needs numpy (recipes, model files): imported on first use, so the admin shell stays light.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from fedsec.api.recipes import FedAvgRecipe, FedOptRecipe, FedProxRecipe, JobResult, ScaffoldRecipe, run_recipe


def __getattr__(name: str) -> object:
    if name in ("FedAvgRecipe", "FedOptRecipe", "FedProxRecipe", "JobResult", "ScaffoldRecipe", "run_recipe"):
        from fedsec.api import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'fedsec.api' has no attribute {name!r}")


__all__ = [
    "FedAvgRecipe",
    "FedOptRecipe",
    "FedProxRecipe",
    "JobInfo",
    "JobResult",
    "RoundPrinter",
    "ScaffoldRecipe",
    "Session",
    "SiteWait",
    "run_recipe",
]
