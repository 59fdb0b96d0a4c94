"""ctglip_sdk.synth (under construction)."""
