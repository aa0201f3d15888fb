"""The captioning server: a FastAPI app (REST API + web page) over a loaded captioner."""

from captionkit.server.app import ServeConfig, create_app, log_requests

__all__ = ["ServeConfig", "create_app", "log_requests"]
