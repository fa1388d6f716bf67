"""Search for the best dataflow and config of a problem in few measurements."""
