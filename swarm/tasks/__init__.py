"""Transformers tasks beyond text generation (speech, images, classification, ...) served by replica peers, and
pipelines of models."""
