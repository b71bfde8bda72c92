"""Data layer: dataset sources, Grain pipelines, and the compressed-dataset store."""
