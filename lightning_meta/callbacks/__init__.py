"""Meta-learning callbacks: model selection and per-episode results."""

from lightning_meta.callbacks.best_checkpoint import BestCheckpoint
from lightning_meta.callbacks.episode_csv import EpisodeResultsCSV

__all__ = ["BestCheckpoint", "EpisodeResultsCSV"]
