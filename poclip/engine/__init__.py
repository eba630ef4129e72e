"""The preference-optimization engine: backbones, alignment heads, losses, training, evaluation."""
