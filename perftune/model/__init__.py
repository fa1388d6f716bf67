"""Models of runtime and power: the roofline and learned estimators."""
