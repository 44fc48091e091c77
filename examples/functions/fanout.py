"""An `async def` handler: work items run concurrently under asyncio.gather.

    curl -X POST localhost:8080/v1/functions/fanout/invoke -d '{"items": [1, 2, 3]}'
"""

import asyncio


async def double(item):
    # Stands in for I/O: each item waits, and the waits overlap.
    await asyncio.sleep(0.01)
    return item * 2


async def handler(event, context):
    items = (event or {}).get("items", [])
    results = await asyncio.gather(*(double(item) for item in items))
    return {"results": results, "remaining_ms": context.remaining_time_ms()}
