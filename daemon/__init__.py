"""Fleet daemon."""
