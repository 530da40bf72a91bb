"""bench-1gpu-vs-2gpu: the paper's half net on one device against the two-tower net on two (sec. 3.2)."""
