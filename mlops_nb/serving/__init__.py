"""Serving: the scoring core, the HTTP front, the prediction-log writer, the BentoML service and bento.

Light modules only are imported here (the BentoML service and the bento builder import heavier engines).
"""

from mlops_nb.serving.prediction_log import PredictionLogWriter
from mlops_nb.serving.scoring import InvalidInput, RowError, ScoringCore, validate_rows

__all__ = ["ScoringCore", "validate_rows", "InvalidInput", "RowError", "PredictionLogWriter"]
