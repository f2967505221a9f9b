"""What the memory tests' child processes share: reading ``/proc/self/status`` (peak RSS is measured in a fresh
interpreter, so this is source text that each child script starts with, not an import)."""

RSS_HELPERS = """
def kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

"""
