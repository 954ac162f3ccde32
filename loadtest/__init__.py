"""Locust load tests with pass/fail gates (a later issue). Speaks HTTP only; may import server.schemas."""
