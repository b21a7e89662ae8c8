"""The procedural world: seeded scenes with exact annotations (the embedded default data source)."""
