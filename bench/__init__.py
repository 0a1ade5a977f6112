"""`make bench`: msgq measured against a baseline in the same run (not part of `make test`)."""
