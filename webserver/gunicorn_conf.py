"""gunicorn settings: threaded workers, one reply queue per worker process (created after fork).

Usage: gunicorn -c webserver/gunicorn_conf.py -w 2 -b 127.0.0.1:8080 'webserver.wsgi:app'
Defaults come from CLASSIFYCLOUD_WEB_* (shared/config.py); command-line flags override them.
"""
from shared.config import get_settings

_settings = get_settings()

bind = f"{_settings.web_host}:{_settings.web_port}"
workers = _settings.web_processes
worker_class = "webserver.gunicorn_worker.JsonErrorWorker"  # gthread + JSON 414/431 + draining SIGTERM
threads = _settings.web_thread_count  # requests block waiting for replies: many threads, little CPU
preload_app = False          # the app (and its reply queue) is built in each worker, never in the master
timeout = 60                 # gthread: worker silence, not request time (requests may wait reply_timeout_s)
# a SIGTERM never cuts a waiting request: each gets its reply or a 503 with its job id before the worker exits
graceful_timeout = int(max(_settings.reply_timeout_s, _settings.shutdown_drain_s)) + 10
limit_request_line = 8190    # gunicorn's maximum; longer request lines get a JSON 414 (gunicorn_worker)
keepalive = 5
control_socket_disable = True  # one fixed ~/.gunicorn socket would be shared by every server on the host
accesslog = "-"
# the path without its query string (a ?url= may carry a presigned signature or user:pass@), no referer
# (same risk), and the client address as the load balancer saw it (X-Forwarded-For)
access_log_format = '%(h)s xff=%({x-forwarded-for}i)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
loglevel = _settings.log_level.lower()


def _context(worker):
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("classifycloud")


def on_starting(server):
    """In the master: under `classifycloud up`, a quick shutdown (SIGINT) when up is gone."""
    import os
    import signal

    from shared.lifeline import watch_parent
    watch_parent(_settings.parent_pid, on_gone=lambda: os.kill(os.getpid(), signal.SIGINT))


def post_fork(server, worker):
    """In each worker: end with the master (its main thread forks us and lives as long as it does)."""
    from shared.lifeline import exit_when_gone, set_parent_death_signal
    set_parent_death_signal()
    if _settings.parent_pid:
        # Under `classifycloud up` the AWS endpoint dies with up: the drain and the usage-log flush that
        # SIGTERM starts could only retry against nothing, so the worker follows up itself, not the master.
        exit_when_gone(_settings.parent_pid)


def post_worker_init(worker):
    """After fork: create this worker's own reply queue and start its listener."""
    ctx = _context(worker)
    if ctx is not None:
        ctx.start()
        worker.log.info("worker %s: reply queue %s", worker.pid, ctx.listener.queue_name)


def worker_exit(server, worker):
    """Delete this worker's reply queue on the way out."""
    ctx = _context(worker)
    if ctx is not None:
        ctx.close()
