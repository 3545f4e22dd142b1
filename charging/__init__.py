"""The charge domain: a charge's lifecycle (pure), its store and webhooks, status answers and
controller presence, the current-rise detector and the outbox every fact is written to.

Ingest and the gateway both use it; it uses neither.
"""
