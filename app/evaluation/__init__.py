"""Verified evaluation: sealed benchmarks, sandboxed scoring of registered models, receipts."""
