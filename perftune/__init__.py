"""perftune: measure, model, tune and serve GPU kernel performance."""

__version__ = "0.1.0"
