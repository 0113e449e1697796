"""The link between a local Django user and the UMS account it mirrors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["UmsIdentity"]


class UmsIdentity(models.Model):
    """The UMS user (by id, the ``sub`` of its tokens) that a local user mirrors.

    A UMS username is no key: an admin may rename an account, and the name of a renamed or
    deleted account may be registered again by someone else. The id is never reused. The link
    lives in its own table so that it works with any user model, Django's default
    ``auth.User`` included, without a custom user model. A local user without a row here is
    not a UMS mirror (or predates the link; see ``UMS_ADOPT_UNLINKED_USERS``).
    """

    user: models.OneToOneField[Any, Any] = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ums_identity"
    )
    ums_id: models.BigIntegerField[int, int] = models.BigIntegerField("UMS user id", unique=True)
    linked_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "UMS identity"
        verbose_name_plural = "UMS identities"

    def __str__(self) -> str:
        return f"UMS user {self.ums_id}"
