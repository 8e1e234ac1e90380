"""Promotion: shadow and canary evidence, the promotion lease, replayed traffic."""
