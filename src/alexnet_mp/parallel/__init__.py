"""Parallelism: placement on devices, the collectives and their flat buffers, the tower vocabulary (comm), and the way from the one-process net to the parallel one."""
