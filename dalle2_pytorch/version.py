__version__ = "0.1.0"

# The version of the published `dalle2-pytorch` package whose public API, configs and checkpoint
# files this implementation is a drop-in replacement for.
REFERENCE_VERSION = "1.15.6"
