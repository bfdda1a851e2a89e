"""Looking inside models and runs.

  diagnostics  gradient norms through time: the vanishing and exploding gradients
  plots        training histories and comparisons (matplotlib, written atomically)
"""
