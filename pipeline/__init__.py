"""expo-data: the pipeline library (pure, typed, testable without Prefect)."""

__version__ = "0.1.0"
