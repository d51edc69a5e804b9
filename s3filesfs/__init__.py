"""s3filesfs: an OpenAI-style Files store on S3, with a FUSE mount and a sync daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s3filesfs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
