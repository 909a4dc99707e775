import os
import time

from aioabort.celery import AbortableTask
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)


def do_something_expensive(x):
    time.sleep(float(os.environ.get("EXPENSIVE_SECONDS", "1")))
    return x * x


class MyLongRunningTask(AbortableTask):

    def run(self, **kwargs):
        results = []
        for x in range(100):
            # Check after every 5 loops..
            if x % 5 == 0:  # alternatively, check when some timer is due
                if self.is_aborted(**kwargs):
                    # Respect the aborted status and terminate
                    # gracefully
                    logger.warning('Task aborted.')
                    return
            y = do_something_expensive(x)
            results.append(y)
        logger.info('Task finished.')
        return results
