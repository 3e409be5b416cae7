"""Webhooks: the endpoints API and the signed, SSRF-safe HTTP sender the dispatcher uses."""
