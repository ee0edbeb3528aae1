"""The web app: a FastAPI service (JSON API under /api/ + one page) over a gallery index, a track run and a model."""
