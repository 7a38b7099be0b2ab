"""Fleet manager."""
