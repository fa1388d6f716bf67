"""Models of runtime and power: the roofline and learned estimators (issue 5)."""
