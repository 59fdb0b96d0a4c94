"""Training and evaluation of CT-GLIP models (organ-text and abnormality-text contrastive learning)."""
