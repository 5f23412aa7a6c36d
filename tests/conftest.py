import os

# Tests never reach the network: hub lookups must come from the (empty) local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
