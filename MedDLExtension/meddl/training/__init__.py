"""Training models from the user's own data."""
