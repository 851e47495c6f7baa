"""Reference checkpoint generations -> this package's modules (key conversion, strict diffs)."""
