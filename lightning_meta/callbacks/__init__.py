"""Meta-learning callbacks: model selection, per-episode results, predictions on new classes (a CSV, or generated PNGs), and what to look at
(adaptation curves, episode galleries, regression tasks, the test episodes in W&B, meta-RL trajectories,
learned hyper-parameters)."""

from lightning_meta.callbacks.best_checkpoint import BestCheckpoint
from lightning_meta.callbacks.episode_csv import EpisodeResultsCSV
from lightning_meta.callbacks.generated_png import GeneratedPNG
from lightning_meta.callbacks.prediction_csv import PredictionCSV
from lightning_meta.callbacks.adaptation_curve import AdaptationCurve
from lightning_meta.callbacks.episode_gallery import EpisodeGallery
from lightning_meta.callbacks.episode_table import EpisodeTable
from lightning_meta.callbacks.hyperparameter_plot import HyperparameterPlot
from lightning_meta.callbacks.regression_plot import RegressionPlot
from lightning_meta.callbacks.trajectory_plot import TrajectoryPlot

__all__ = ["BestCheckpoint", "EpisodeResultsCSV", "GeneratedPNG", "PredictionCSV"]
__all__ += ["AdaptationCurve", "EpisodeGallery", "EpisodeTable", "HyperparameterPlot", "RegressionPlot", "TrajectoryPlot"]
