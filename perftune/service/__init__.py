"""perftune's REST service: ``service.app.create_app`` (FastAPI), run by ``perftune serve``."""
