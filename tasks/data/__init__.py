"""Data in: sources read into immutable, content-addressed snapshots, and the stores they live in."""
