"""What the portal tells UMS about the browser behind a sign-in.

UMS weighs every sign-in, and a device the account has not signed in from counts against it
(see the README, "Adaptive sign-in"). A portal calls UMS from its own server, so UMS would see
the portal's HTTP client on every sign-in. So the UMS calls made for a browser
(:func:`~ums_client.django.get_client`, the backend's sign-in and its second step) carry:

- ``X-UMS-Device-Id``: a stable random id of the browser, kept in a long-lived cookie
  (``settings.UMS_DEVICE_COOKIE``, default ``ums_device``) by
  :class:`~ums_client.django.middleware.UMSDeviceMiddleware`. UMS recognises the device by it
  first. Without the middleware no id is sent, and UMS falls back on the headers below.
- the browser's ``User-Agent``, ``Accept-Language`` and client hints (``Sec-CH-UA``,
  ``Sec-CH-UA-Mobile``, ``Sec-CH-UA-Platform``), as it sent them: UMS names the device by
  them ("Firefox on Linux") and, without an id, tells devices apart by them.

- the browser's IP address, as ``X-Forwarded-For``: from ``request.META["REMOTE_ADDR"]``, or
  from the ``request.META`` key that ``settings.UMS_CLIENT_IP_META`` names when the portal
  itself sits behind a proxy that sets one (say ``"HTTP_X_REAL_IP"``). UMS believes it only
  from the portal's address listed in ``UMS_TRUSTED_PROXIES``; without that, UMS weighs the
  portal's address, and its GeoIP and denylist signals cannot judge portal sign-ins.
  ``settings.UMS_FORWARD_CLIENT_IP = False`` turns this off.
"""

from __future__ import annotations

import ipaddress
import re
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ..client import DEVICE_ID_HEADER

__all__ = [
    "DEFAULT_COOKIE",
    "DEFAULT_COOKIE_AGE",
    "browser_headers",
    "client_ip",
    "cookie_name",
    "device_id",
    "is_device_id",
    "new_device_id",
]

#: The cookie's default name (``settings.UMS_DEVICE_COOKIE``).
DEFAULT_COOKIE = "ums_device"
#: The cookie's default lifetime in seconds, 400 days (``settings.UMS_DEVICE_COOKIE_AGE``),
#: counted from the latest sign-in; browsers cap cookies at that.
DEFAULT_COOKIE_AGE = 400 * 24 * 3600

# On the request: its device id, and whether the cookie is to be (re)sent with the response
# (a new id, or a sign-in renewing it) once a UMS call used the id.
_ID_ATTR = "ums_device_id"
_RENEW_ATTR = "_ums_device_renew"
_USED_ATTR = "_ums_device_used"

_VALID_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")

# Request headers (as in request.META) forwarded to UMS, by their HTTP names.
_FORWARDED = {
    "HTTP_USER_AGENT": "User-Agent",
    "HTTP_ACCEPT_LANGUAGE": "Accept-Language",
    "HTTP_SEC_CH_UA": "Sec-CH-UA",
    "HTTP_SEC_CH_UA_MOBILE": "Sec-CH-UA-Mobile",
    "HTTP_SEC_CH_UA_PLATFORM": "Sec-CH-UA-Platform",
}


def cookie_name() -> str:
    return str(getattr(settings, "UMS_DEVICE_COOKIE", None) or DEFAULT_COOKIE)


def new_device_id() -> str:
    """A fresh device id: 32 URL-safe characters, 192 random bits."""
    return secrets.token_urlsafe(24)


def is_device_id(value: str | None) -> bool:
    """Whether a cookie's value is a device id this integration could have made."""
    return value is not None and _VALID_ID.fullmatch(value) is not None


def device_id(request: HttpRequest, signing_in: bool = False) -> str | None:
    """The browser's device id, as :class:`UMSDeviceMiddleware` found or made it for this
    request; ``None`` without the middleware. ``signing_in`` renews the cookie's lifetime."""
    value: str | None = getattr(request, _ID_ATTR, None)
    if value is not None:
        setattr(request, _USED_ATTR, True)
        if signing_in:
            setattr(request, _RENEW_ATTR, True)
    return value


def browser_headers(request: HttpRequest, signing_in: bool = False) -> dict[str, str]:
    """The headers to send UMS on behalf of the browser of ``request`` (see the module)."""
    headers = {
        name: value
        for key, name in _FORWARDED.items()
        if (value := request.META.get(key)) and _forwardable(value)
    }
    identifier = device_id(request, signing_in)
    if identifier is not None:
        headers[DEVICE_ID_HEADER] = identifier
    address = client_ip(request)
    if address is not None:
        headers["X-Forwarded-For"] = address
    return headers


def client_ip(request: HttpRequest) -> str | None:
    """The browser's IP address as the portal sees it (see the module), if it is one."""
    if not getattr(settings, "UMS_FORWARD_CLIENT_IP", True):
        return None
    key = str(getattr(settings, "UMS_CLIENT_IP_META", None) or "REMOTE_ADDR")
    value = str(request.META.get(key) or "").split(",")[0].strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _forwardable(value: str) -> bool:
    # HTTP/1.1 header values sent by httpx must be ASCII; no control characters either.
    return value.isascii() and value.isprintable() and len(value) <= 1024


def assign(request: HttpRequest) -> None:
    """For the middleware: give the request its device id, from its cookie or new."""
    current = request.COOKIES.get(cookie_name())
    fresh = not is_device_id(current)
    setattr(request, _ID_ATTR, new_device_id() if fresh else current)
    setattr(request, _RENEW_ATTR, fresh)
    setattr(request, _USED_ATTR, False)


def set_cookie_if_due(request: HttpRequest, response: HttpResponse) -> None:
    """For the middleware: send the cookie when a UMS call used a new id, or a sign-in used
    the id (its lifetime then starts again). Other responses carry no cookie."""
    if not (getattr(request, _USED_ATTR, False) and getattr(request, _RENEW_ATTR, False)):
        return
    response.set_cookie(
        cookie_name(),
        getattr(request, _ID_ATTR),
        max_age=int(getattr(settings, "UMS_DEVICE_COOKIE_AGE", DEFAULT_COOKIE_AGE)),
        secure=bool(getattr(settings, "SESSION_COOKIE_SECURE", False)),
        httponly=True,
        samesite="Lax",
    )
