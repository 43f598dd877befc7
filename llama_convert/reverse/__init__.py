"""The way back: Hugging Face → Meta's original format, and Meta → Meta resharding."""
