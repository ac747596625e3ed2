"""Swift's daemons log to syslog (/dev/log, else UDP to localhost:514); a container has
neither. Named in `log_custom_handlers`, this replaces that handler with one writing to
stdout, so `docker compose logs object-store` shows them."""

import logging
import sys
from logging.handlers import SysLogHandler


class _Stdout(logging.StreamHandler):
    pass


def to_stdout(*args, **kwargs):
    """Swift calls it with (conf, name, log_to_console, log_route, fmt, logger, adapted_logger)."""
    logger = kwargs["logger"] if "logger" in kwargs else args[5]
    formatter = None
    for handler in list(logger.handlers):
        if isinstance(handler, (SysLogHandler, _Stdout)):
            formatter = handler.formatter or formatter
            logger.removeHandler(handler)
    stdout = _Stdout(sys.stdout)
    stdout.setFormatter(formatter)
    logger.addHandler(stdout)
