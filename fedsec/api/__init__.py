"""The admin Python API: Session, over the server's admin port with an admin kit."""

from fedsec.api.progress import RoundPrinter
from fedsec.api.session import JobInfo, Session

__all__ = ["JobInfo", "RoundPrinter", "Session"]
