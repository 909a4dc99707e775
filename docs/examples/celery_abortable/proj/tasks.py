from __future__ import absolute_import

import os
import time

from aioabort.celery import AbortableTask
from celery.utils.log import get_task_logger

from proj.celery import app

logger = get_task_logger(__name__)


def do_something_expensive(i):
    time.sleep(float(os.environ.get("EXPENSIVE_SECONDS", "1")))
    return i * i


@app.task(bind=True, base=AbortableTask)
def long_running_task(self):
    results = []
    for i in range(100):
        # check after every 5 iterations...
        # (or alternatively, check when some timer is due)
        if not i % 5:
            if self.is_aborted():
                # respect aborted state, and terminate gracefully.
                logger.warning('Task aborted')
                return
            value = do_something_expensive(i)
            results.append(value)
    logger.info('Task complete')
    return results
