"""The operator console, served by the gateway under ``/console``: server-rendered pages
(Jinja2), live parts refreshed by htmx (vendored in ``static/`` with its licence; no CDN,
no build step).

Operators log in with the accounts of ``chargeline operators`` (``cloud_gateway.operators``);
a session is a cookie that only the console's path receives (HttpOnly, SameSite=Strict,
Secure over HTTPS). Every form that changes something carries the session's CSRF token,
and only an ``admin`` may act; each action is recorded with who took it. Pages set a
content security policy that allows nothing but this origin's scripts and styles.
"""
