"""One router per resource; each is thin and calls service.recommend."""
