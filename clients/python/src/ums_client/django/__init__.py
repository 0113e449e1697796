"""Django integration: UMS login, session-kept tokens, access decorators.

Settings::

    UMS_BASE_URL = "https://ums.example.org"   # required
    UMS_TIMEOUT = 10.0                         # seconds, optional
    UMS_REFRESH_LEEWAY = 30                    # refresh when fewer seconds are left, optional
    AUTHENTICATION_BACKENDS = ["ums_client.django.backends.UMSBackend"]
    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ums_client.django.middleware.UMSTokenMiddleware",
        ...,
    ]

The backend and middleware modules are imported by Django itself (they need the app
registry); this module can be imported before Django is set up.
"""

from .auth import logout
from .decorators import ROLE_RANK, require_lab_access, ums_admin_required, ums_login_required
from .store import SessionTokenStore, get_client

__all__ = [
    "ROLE_RANK",
    "SessionTokenStore",
    "get_client",
    "logout",
    "require_lab_access",
    "ums_admin_required",
    "ums_login_required",
]
