from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from ums_client import AccountLocked
from ums_client.django import (
    get_client,
    logout,
    require_lab_access,
    ums_admin_required,
    ums_login_required,
)


def login_view(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse("<form method=post>...</form>")
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        error = getattr(request, "ums_error", None)
        if isinstance(error, AccountLocked):
            return HttpResponse(f"locked; retry in {error.retry_after:.0f} s", status=423)
        return HttpResponse("wrong username or password", status=401)
    login(request, user)
    return redirect(next_url(request))


def next_url(request: HttpRequest) -> str:
    """Where to go after logging in: ``next`` if it stays on this site, else the default.

    An unchecked ``next`` is an open redirect: a link to ``/login/?next=https://evil.example/``
    would send someone who has just typed their password on to a look-alike site.
    """
    candidate = request.POST.get("next") or request.GET.get("next")
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return resolve_url(settings.LOGIN_REDIRECT_URL)


@ums_login_required
def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"username": request.user.get_username()})


@ums_login_required
def my_labs(request: HttpRequest) -> HttpResponse:
    me = get_client(request).me()
    return JsonResponse({"labs": [m.code for m in me.labs or ()]})


@require_lab_access(lab_kwarg="lab_id", role="viewer")
def lab_page(request: HttpRequest, lab_id: int) -> HttpResponse:
    lab = get_client(request).get_lab(lab_id)
    return JsonResponse({"lab": lab.code, "role": request.lab_access.role})


@require_lab_access(role="lab_admin")
def lab_manage(request: HttpRequest, lab_id: int) -> HttpResponse:
    members = get_client(request).list_members(lab_id)
    return JsonResponse({"members": [m.user.username for m in members]})


@ums_admin_required
def admin_page(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"users": get_client(request).list_users().total})


@ums_admin_required
def admin_settings(request: HttpRequest) -> HttpResponse:
    """An admin page that makes no UMS call itself: only the decorator guards it."""
    return JsonResponse({"admin": request.user.get_username()})


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("/login/")
