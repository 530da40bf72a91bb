"""bench-data: images/s per core of each data path, and the data wait of a training step."""
