"""The partner-facing gateway (OAuth2 + event API). Built in the partner-API issue."""
