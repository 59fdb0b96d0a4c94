"""ctglip_sdk.model (under construction)."""
