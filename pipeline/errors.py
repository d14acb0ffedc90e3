"""The pipeline's named errors. The CLI prints each as one line and exits with its code."""
from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline reports to a user as one line."""

    exit_code = 1


class ConfigError(PipelineError):
    """A configuration file, option or target profile is invalid."""

    exit_code = 2


def not_logits(model: str, shape: list | str, num_classes: int) -> "ModelError":
    """The error for a model whose output is not [1, num_classes]: a wider one is told about --labels."""
    wider = isinstance(shape, list) and len(shape) == 2 and shape[1] > num_classes
    hint = (f"; if the model's {shape[1]} classes include the data's, pass --labels FILE (the model's class names in "
            "output order)") if wider else ""
    return ModelError(f"{model}: output {shape} is not [batch, {num_classes}] logits for the data's {num_classes} "
                      f"classes{hint}")


class DataError(PipelineError):
    """A dataset is missing, empty or does not fit the model."""

    exit_code = 3


class ModelError(PipelineError):
    """A model or checkpoint cannot be loaded or does not accept the input."""

    exit_code = 4


class ConversionError(PipelineError):
    """An exporter, quantizer or converter failed on the model."""

    exit_code = 5


class AccuracyError(PipelineError):
    """An artifact's accuracy or numerical parity is beyond its tolerance."""

    exit_code = 6


class StageOrderError(PipelineError):
    """A stage was asked to run before the stage whose output it needs."""

    exit_code = 7


class BenchmarkError(PipelineError):
    """Benchmarking an artifact failed."""

    exit_code = 8
