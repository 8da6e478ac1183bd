"""Exceptions raised at sj_jax's boundaries: each names the file, field or tensor at fault."""


class SJError(Exception):
    """Base class of every error sj_jax raises on bad input."""


class ConfigError(SJError, ValueError):
    """A config file or mapping has an unknown, missing or ill-typed key."""


class DataError(ConfigError):
    """Bad data: the message names the file and line (or the field)."""


class WeightsError(SJError, ValueError):
    """A checkpoint file is missing, truncated, or holds a missing or misshapen tensor."""


class TokenizerError(SJError, ValueError):
    """No usable tokenizer or chat template could be loaded."""


class ModelNotFoundError(SJError, FileNotFoundError):
    """A model name or path resolves to nothing loadable."""
