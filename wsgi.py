"""Gunicorn entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

Each worker process imports this module and builds its own app, Vault client and token
cache, because those hold sockets and locks that must not be shared across a fork.
"""

from app import create_app
from broker.config import load_settings
from broker.logs import configure_logging

_settings = load_settings()
configure_logging(_settings.log_level, _settings.log_format)
app = create_app(_settings)
