"""Patient self-service privacy portal."""
