"""The Django app of the integration: it owns the table linking local users to UMS ids."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["UMSClientConfig"]


class UMSClientConfig(AppConfig):
    """``INSTALLED_APPS = [..., "ums_client.django"]`` (then ``manage.py migrate``).

    The label is ``ums_client`` rather than the default ``django``, which would read as
    Django's own. The primary key type is fixed here so that the shipped migration does not
    depend on the project's ``DEFAULT_AUTO_FIELD``.
    """

    name = "ums_client.django"
    label = "ums_client"
    verbose_name = "UMS"
    default_auto_field = "django.db.models.BigAutoField"
