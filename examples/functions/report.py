"""Uses several standard-library modules: a word report of a text.

Everything imported here is imported once, at deploy time, into the
function's snapshot; each request starts with it loaded.

    curl -X POST localhost:8080/v1/functions/report/invoke \
         -d '{"text": "the cat and the hat", "top": 2}'
"""

import collections
import datetime
import hashlib
import re
import statistics
import textwrap

WORD = re.compile(r"[a-z']+")


def handler(event, context):
    text = event.get("text", "")
    words = WORD.findall(text.lower())
    lengths = [len(w) for w in words] or [0]
    return {
        "words": len(words),
        "top": collections.Counter(words).most_common(event.get("top", 3)),
        "mean_length": round(statistics.fmean(lengths), 2),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "preview": textwrap.shorten(text, width=40, placeholder="..."),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
