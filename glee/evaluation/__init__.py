"""Evaluation of AU detectors: F1 (Sec. IV-A), Ave-Var (Fig. 6), plots, the paper's tables."""
