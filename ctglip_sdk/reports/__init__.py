"""ctglip_sdk.reports (under construction)."""
