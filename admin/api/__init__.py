"""Admin REST resources: one module per noun, each declaring its endpoints on import."""
