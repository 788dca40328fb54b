"""fedsec: a secure federated-learning system.

Importing this package is cheap: it pulls in none of the heavy libraries
(grpc, torch, tenseal, mlflow, prompt_toolkit); each lives in the one module
that needs it.
"""

__version__ = "0.1.0"
