"""The measurement store (DuckDB): the shared base every layer may import."""

from store.db import Store, default_db_path
from store.errors import PerftuneInputError, StoreError
from store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "PerftuneInputError", "Store", "StoreError", "default_db_path"]
