"""project.yml -> Project -> prod_NN startup kits, built in a staging folder, then renamed."""

from fedsec.provision.builder import ProvisionResult, provision
from fedsec.provision.project import Project, load_project

__all__ = ["Project", "ProvisionResult", "load_project", "provision"]
