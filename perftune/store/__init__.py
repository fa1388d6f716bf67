"""The measurement store (DuckDB): the shared base every layer may import."""

from perftune.errors import PerftuneInputError, StoreError
from perftune.settings import default_db_path
from perftune.store.db import Store
from perftune.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "PerftuneInputError", "Store", "StoreError", "default_db_path"]
