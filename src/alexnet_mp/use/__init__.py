"""Uses of a trained net: evaluate, predict, export, compare two runs."""
