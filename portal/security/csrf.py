"""CSRF settings shared by the app and the templates (Litestar's double-submit middleware does the check).

The cookie is __Host- prefixed so a sibling subdomain cannot plant one; forms send the token in
``_csrf_token`` and htmx sends it in the header set on <body hx-headers>.
"""

CSRF_COOKIE = "__Host-csrftoken"
CSRF_HEADER = "x-csrftoken"
CSRF_FIELD = "_csrf_token"
