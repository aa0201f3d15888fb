"""Models: encoders (images -> grid features), attention, decoders, the captioner."""
