import os

# Tests never reach the network: hub lookups must come from the (empty) local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The compiled-rules cache and the calibration store of this test session, not the user's: a developer's
# own calibration points would otherwise change what plans and estimates the tests see.
import tempfile  # noqa: E402

for variable in ("LORA_ADVISOR_CACHE_DIR", "LORA_ADVISOR_DATA_DIR"):
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=f"lora-advisor-test-{variable[14:].lower()}-")
