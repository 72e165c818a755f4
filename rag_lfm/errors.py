"""Exceptions raised by rag-lfm.

Every error names the input, its value and the fix (or the valid options). They all
derive from :class:`RagLfmError` so an application can catch the library's errors
in one place, and from the matching built-in (``ValueError``, ``FileNotFoundError``)
so generic handlers still work.
"""

from __future__ import annotations


class RagLfmError(Exception):
    """Base class of every error rag-lfm raises on purpose."""


class ConfigError(RagLfmError, ValueError):
    """A parameter, spec key or option has an invalid value."""


class ModelNotFoundError(RagLfmError, FileNotFoundError):
    """A model name or path could not be resolved to local files."""


class IndexFormatError(RagLfmError, ValueError):
    """An index directory is missing, not an index, of an unknown version, or damaged."""


class EmbedderMismatchError(RagLfmError, ValueError):
    """An index is opened with an embedder other than the one it was built with."""


class FilterError(RagLfmError, ValueError):
    """A metadata filter is malformed, names an unknown field or has a wrong type."""


class SourceError(RagLfmError):
    """A connector could not read its source at all (not one bad record: the whole source)."""


class ConcurrentWriteError(ConfigError):
    """Another writer holds the index's write lock past the timeout, or committed under a stale handle.

    A subclass of :class:`ConfigError` because it used to be raised as one.
    """


class TrustError(RagLfmError, PermissionError):
    """Something read from an index directory (a source spec) is not trusted to run; the message says how to allow it."""


class NetworkPolicyError(RagLfmError, PermissionError):
    """A URL resolves to an address the web connector's network policy denies (loopback, private ...)."""
