"""reidkit.inference."""
