"""Meta-learning callbacks: model selection, per-episode results, predictions on new classes."""

from lightning_meta.callbacks.best_checkpoint import BestCheckpoint
from lightning_meta.callbacks.episode_csv import EpisodeResultsCSV
from lightning_meta.callbacks.prediction_csv import PredictionCSV

__all__ = ["BestCheckpoint", "EpisodeResultsCSV", "PredictionCSV"]
