from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, resolve_url
from django.utils.html import escape
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from ums_client import (
    AccountLocked,
    AuthenticationError,
    ConsentRequired,
    MFAEnrollmentRequired,
    MFARequired,
    PasswordResetRequired,
    ValidationError,
    VerificationRequired,
)
from ums_client.django import (
    PendingMFA,
    get_client,
    logout,
    pending_mfa,
    require_lab_access,
    session_amr,
    start_totp_enrollment,
    ums_admin_required,
    ums_login_required,
    ums_mfa_required,
)


def login_view(request: HttpRequest) -> HttpResponse:
    """Password first; for an account with a second factor, a second form (same URL)."""
    if request.method != "POST":
        return HttpResponse("<form method=post>...</form>")
    if "mfa_method" in request.POST:
        return second_step(request)
    if "username" not in request.POST and (
        "accept_terms" in request.POST or "accept_privacy" in request.POST
    ):
        return consent_step(request)
    user = authenticate(
        request,
        username=request.POST.get("username"),
        password=request.POST.get("password"),
        accept_terms=request.POST.get("accept_terms"),
        accept_privacy=request.POST.get("accept_privacy"),
    )
    if user is None:
        error = getattr(request, "ums_error", None)
        if isinstance(error, AccountLocked):
            return HttpResponse(f"locked; retry in {error.retry_after:.0f} s", status=423)
        if isinstance(error, PasswordResetRequired):
            return HttpResponse("reset your password to sign in again", status=403)
        pending = pending_mfa(request)
        if isinstance(error, ConsentRequired) and pending is not None:
            return consent_form()
        if isinstance(error, (MFARequired, VerificationRequired)) and pending is not None:
            return second_factor_form(pending)
        if isinstance(error, MFAEnrollmentRequired) and pending is not None:
            enrollment = start_totp_enrollment(request)
            return HttpResponse(
                f"enrol an authenticator app: {enrollment.qr_svg} secret={enrollment.secret}"
                "<form method=post><input type=hidden name=mfa_method value=totp>"
                "<input name=mfa_code></form>"
            )
        return HttpResponse("wrong username or password", status=401)
    login(request, user)
    return redirect(next_url(request))


def second_factor_form(pending: PendingMFA, status: int = 200, note: str = "") -> HttpResponse:
    if pending.verifying:  # a risky sign-in: the code UMS emailed, no second factor
        return HttpResponse(
            f"{escape(note)}<form method=post>we emailed you a code: "
            "<input type=hidden name=mfa_method value=email_code><input name=mfa_code></form>",
            status=status,
        )
    choices = "".join(f"<option value={m}>{m}</option>" for m in pending.methods if m != "webauthn")
    return HttpResponse(
        f"{escape(note)}<form method=post>second factor: <select name=mfa_method>{choices}"
        "</select><input name=mfa_code></form>",
        status=status,
    )


def consent_form(status: int = 200, note: str = "") -> HttpResponse:
    return HttpResponse(
        f"{escape(note)}<form method=post>accept the terms of service and privacy notice: "
        "<input name=accept_terms><input name=accept_privacy></form>",
        status=status,
    )


def consent_step(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request,
        accept_terms=request.POST.get("accept_terms"),
        accept_privacy=request.POST.get("accept_privacy"),
    )
    if user is None:
        pending = pending_mfa(request)
        if pending is None:
            return HttpResponse("sign in again", status=401)
        if pending.consenting:
            return consent_form(status=400, note="accept the versions in force")
        return second_factor_form(pending)  # accepted: the sign-in's next step
    login(request, user)
    return redirect(next_url(request))


def second_step(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, mfa_method=request.POST["mfa_method"], mfa_code=request.POST.get("mfa_code")
    )
    if user is None:
        error = getattr(request, "ums_error", None)
        if isinstance(error, AccountLocked):
            return HttpResponse(f"locked; retry in {error.retry_after:.0f} s", status=423)
        pending = pending_mfa(request)
        if pending is None:
            return HttpResponse("sign in again", status=401)
        note = f"not accepted; {pending.answers_left} tries left"
        return second_factor_form(pending, status=401, note=note)
    recovery_codes = user.ums_login.recovery_codes  # after a first enrolment: shown once
    login(request, user)
    if recovery_codes:
        return HttpResponse("recovery codes: " + " ".join(recovery_codes))
    return redirect(next_url(request))


@ums_login_required
def step_up_view(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse("<form method=post>...</form>")
    try:
        get_client(request).step_up(request.POST["method"], code=request.POST.get("code"))
    except ValidationError as exc:
        return HttpResponse(escape(str(exc)), status=400)
    except AuthenticationError:
        # A refused answer: handled here, since ums_login_required logs out on a 401.
        return HttpResponse("not accepted", status=401)
    return redirect(next_url(request))


@ums_login_required
def my_devices(request: HttpRequest) -> HttpResponse:
    devices = get_client(request).list_devices()
    return JsonResponse(
        {
            "devices": [
                {
                    "browser": d.browser,
                    "os": d.os,
                    "current": d.current,
                    "last_ip": d.last_ip,
                    "last_place": d.last_place,
                }
                for d in devices
            ]
        }
    )


@ums_mfa_required
def mfa_page(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"amr": list(session_amr(request))})


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
