"""The REST service that answers from the store, the models and the tuner (issue 7)."""
