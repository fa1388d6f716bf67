"""Collection campaigns on a cluster: a TOML spec swept by Dask workers, one per GPU.

The driver (:mod:`.engine`) plans the spec per device type, sends chunks of configs of one
problem to the workers of that type (:mod:`.tasks`: the single-GPU collector's measuring core,
unchanged), and alone writes what comes back to the store, in transactional batches. A run is
resumable from the store: every measurement has a natural key, so nothing is measured or
stored twice.
"""
