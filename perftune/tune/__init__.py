"""Search for the best dataflow and config of a problem (issue 6)."""
