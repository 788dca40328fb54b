"""fedsec: a secure federated-learning system.

Importing this package is cheap: it pulls in none of the heavy libraries
(grpc, torch, tenseal, mlflow, prompt_toolkit, not even numpy); each lives in
the one module that needs it. `fedsec.load_model(path)` (a downloaded result's
model as numpy arrays) is imported on first use.
"""

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from fedsec.wire.model_file import load_model


def __getattr__(name: str) -> object:
    if name == "load_model":
        from fedsec.wire.model_file import load_model

        return load_model
    raise AttributeError(f"module 'fedsec' has no attribute {name!r}")


__all__ = ["__version__", "load_model"]
