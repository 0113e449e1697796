"""Django integration: UMS login, session-kept tokens, access decorators.

Settings::

    INSTALLED_APPS = [..., "ums_client.django"]  # required, then migrate: links users by UMS id
    UMS_BASE_URL = "https://ums.example.org"   # required
    UMS_TIMEOUT = 10.0                         # seconds, optional
    UMS_REFRESH_LEEWAY = 30                    # refresh when fewer seconds are left, optional
    UMS_ADMIN_CACHE_TTL = 30                   # seconds an admin check by UMS is reused, optional
    UMS_ISSUER = "https://ums.example.org"     # iss for get_verifier(), default UMS_BASE_URL
    UMS_JWT_AUDIENCE = "lab-portal"            # aud for get_verifier(), as set on the server
    UMS_ADOPT_UNLINKED_USERS = False           # upgrade aid, see backends.sync_user
    UMS_STEP_UP_URL = "/step-up/"              # where require_amr sends a session lacking a
                                               # factor (with ?next=), optional; else 403
    UMS_DEVICE_COOKIE = "ums_device"           # the browser's device id cookie, optional
    UMS_DEVICE_COOKIE_AGE = 400 * 24 * 3600    # its lifetime from the latest sign-in, optional
    AUTHENTICATION_BACKENDS = ["ums_client.django.backends.UMSBackend"]
    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ums_client.django.middleware.UMSTokenMiddleware",
        "ums_client.django.middleware.UMSDeviceMiddleware",  # X-UMS-Device-Id, see devices
        ...,
    ]

The backend and middleware modules are imported by Django itself (they need the app
registry); this module can be imported before Django is set up.
"""

from .auth import logout
from .decorators import (
    ROLE_RANK,
    require_amr,
    require_lab_access,
    session_amr,
    ums_admin_required,
    ums_login_required,
    ums_mfa_required,
)
from .devices import device_id
from .mfa import PendingMFA, forget_pending_mfa, pending_mfa, start_totp_enrollment
from .store import SessionTokenStore, get_client, get_verifier

__all__ = [
    "ROLE_RANK",
    "PendingMFA",
    "SessionTokenStore",
    "device_id",
    "forget_pending_mfa",
    "get_client",
    "get_verifier",
    "logout",
    "pending_mfa",
    "require_amr",
    "require_lab_access",
    "session_amr",
    "start_totp_enrollment",
    "ums_admin_required",
    "ums_login_required",
    "ums_mfa_required",
]
