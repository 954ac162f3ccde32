"""Locust load tests of ``POST /retrieve`` with pass/fail gates, and a capacity sweep (``radgr loadtest``).

Speaks HTTP only: no module here imports radgr's other packages (the import-linter contract allows at most
``server.schemas``), and only the two locustfiles and :mod:`loadtest.retrieve_user` import Locust (which patches
its process with gevent), so the rest can be imported anywhere.
"""
