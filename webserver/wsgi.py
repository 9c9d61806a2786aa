"""WSGI entry point for gunicorn: `gunicorn -c webserver/gunicorn_conf.py 'webserver.wsgi:app'`."""
import logging

from shared.config import get_settings
from webserver.app import create_app

logging.basicConfig(level=get_settings().log_level,
                    format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
app = create_app()
