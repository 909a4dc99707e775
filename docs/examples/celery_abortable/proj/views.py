from __future__ import absolute_import

import time

from proj.tasks import long_running_task

def myview(request):
    # result is of type AbortableAsyncResult
    result = long_running_task.delay()

    # abort the task after 10 seconds
    time.sleep(10)
    result.abort()
