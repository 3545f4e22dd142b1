"""The database every cloud service shares: the migrations that create every service's
tables (``sql/``), the embedded server used when no URL is given, the registry of sites,
controllers and outlets, and the per-service database logins.
"""
