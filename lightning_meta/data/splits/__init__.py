"""Class splits of the benchmark data sets (JSON files shipped with the package)."""
