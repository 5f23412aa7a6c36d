"""Readers for the model types added after the first eight (hf_config.py reads those by hand).

Each family module defines ``read(original, text, name, source) -> ModelArch``: ``original`` is the whole
config.json (a vision-language model's tower lives outside ``text_config``), ``text`` the language model's
part with its model_type.  A reader applies transformers' defaults for every key the file leaves out,
checks ranges with hf_config's helpers and keeps the file verbatim in ``ModelArch.hf_config_json`` so the
oracle and the verification run build exactly that model.
"""

from __future__ import annotations

from typing import Callable

READERS: dict[str, Callable] = {}

from . import qwen3_moe  # noqa: E402

READERS["qwen3_moe"] = qwen3_moe.read

from . import gpt_oss  # noqa: E402

READERS["gpt_oss"] = gpt_oss.read

from . import gemma3  # noqa: E402

READERS["gemma3"] = gemma3.read
READERS["gemma3_text"] = gemma3.read

from . import llama_layout  # noqa: E402,F401  (registers olmo2, olmo3, smollm3, granite, ernie4_5)

from . import qwen3_5  # noqa: E402

READERS["qwen3_5"] = qwen3_5.read
READERS["qwen3_5_text"] = qwen3_5.read
READERS["qwen3_5_moe"] = qwen3_5.read
READERS["qwen3_5_moe_text"] = qwen3_5.read

from . import qwen3_next  # noqa: E402

READERS["qwen3_next"] = qwen3_next.read

from . import gemma4  # noqa: E402

READERS["gemma4"] = gemma4.read
READERS["gemma4_text"] = gemma4.read
