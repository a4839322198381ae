"""Training machinery shared by the training and distillation scenarios."""
