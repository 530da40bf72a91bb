"""The paper's experiments: the sweep of its comparisons (reproduce), Figures 1 to 4, the traced step, Student-t spreads."""
