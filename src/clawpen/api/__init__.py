"""The HTTP API and the web dashboard, served by the daemon (see docs/api.md).

``config`` (listen address, TLS) and ``cli`` import nothing heavy; ``app`` (FastAPI) and
``component`` (uvicorn inside the daemon's event loop) are imported only by the daemon.
"""
