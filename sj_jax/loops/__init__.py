"""The loops above the trainer: tournament self-rejection at inference (and, next, SELF-JUDGE)."""
