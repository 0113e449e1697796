from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.login_view),
    path("step-up/", views.step_up_view),
    path("mfa-only/", views.mfa_page),
    path("logout/", views.logout_view),
    path("whoami/", views.whoami),
    path("devices/", views.my_devices),
    path("labs/", views.my_labs),
    path("labs/<int:lab_id>/", views.lab_page),
    path("labs/<int:lab_id>/manage/", views.lab_manage),
    path("admin-only/", views.admin_page),
    path("admin-only/settings/", views.admin_settings),
]
