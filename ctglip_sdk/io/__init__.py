"""ctglip_sdk.io (under construction)."""
