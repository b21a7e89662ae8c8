"""Looking at synthesized data."""
