"""A first program for `eryx run`: real CPython 3.14 inside a WebAssembly sandbox."""

import hashlib
import platform
import sys
from collections import Counter

print(f"Hello from {platform.python_implementation()} {sys.version.split()[0]} on {sys.platform}!")
words = "the quick brown fox jumps over the lazy dog the end".split()
print("most common words:", Counter(words).most_common(2))
print("sha256('eryx') =", hashlib.sha256(b"eryx").hexdigest()[:16], "...")
