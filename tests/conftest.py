import os

# Tests never reach the network: hub lookups must come from the (empty) local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The compiled-rules cache goes to a directory of this test session, not the user's cache.
if "LORA_ADVISOR_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["LORA_ADVISOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lora-advisor-test-cache-")
