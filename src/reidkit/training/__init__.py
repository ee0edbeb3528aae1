"""reidkit.training."""
