"""Model architectures: shapes, the catalog, config.json parsing and exact parameter counts."""

from .arch import ModelArch, MoE
from .catalog import catalog_names, nearest_names, resolve_model
from .params import LinearSpec, ParamCounts, count_params, layer_linears

__all__ = ["ModelArch", "MoE", "LinearSpec", "ParamCounts", "catalog_names", "count_params", "layer_linears",
           "nearest_names", "resolve_model"]
