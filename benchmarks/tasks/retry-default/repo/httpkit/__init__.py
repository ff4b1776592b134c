from .client import Client, RequestFailed

__all__ = ["Client", "RequestFailed"]
