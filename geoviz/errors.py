"""The one exception type users see: a sentence saying what was wrong and what is allowed."""

__all__ = ["GeovizError", "DatasetNotFoundError", "ConfigError", "DivergedError"]


class GeovizError(Exception):
    """Base of every error a user can cause; its message is one readable sentence."""


class ConfigError(GeovizError, ValueError):
    """A setting is outside what is allowed."""


class DatasetNotFoundError(GeovizError, FileNotFoundError):
    """A dataset's files are not where we looked."""


class DivergedError(GeovizError, ArithmeticError):
    """A path produced NaN/inf or an exploding loss."""
