"""The device check on one GPU (gpu_check.sh; docs/gpu.md) and its profile companion."""
