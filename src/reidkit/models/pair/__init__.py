"""reidkit.models.pair."""
