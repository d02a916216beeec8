"""Serving a trained model: SavedModel export and streaming batch prediction."""
