"""A minimal Django portal used by test_django.py (settings are in conftest.py)."""
